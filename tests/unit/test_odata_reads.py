"""dualwrite's OData reads (dualwrite.odata): what they keep in memory."""

from __future__ import annotations

import gc
import weakref

import httpx

from dualwrite import odata


def test_a_read_page_is_freed_when_dropped_without_waiting_for_the_cyclic_collector() -> None:
    """httpx ties a response to its stream in a cycle; a long read's pages piled up until a full collection."""
    page = {"value": [{"accountnumber": f"A-{i}"} for i in range(1000)]}
    client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=page)))
    gc.disable()
    try:
        resp = client.get("http://127.0.0.1/api/data/v9.2/accounts")
        assert odata.json_object(resp, "a page") == page
        gone = weakref.ref(resp)
        del resp
        assert gone() is None, "the response waits for the cyclic collector"
    finally:
        gc.enable()
        client.close()
