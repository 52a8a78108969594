"""How the F&O target reads F&O's answers (no service needed)."""

from __future__ import annotations

from consumers.fo import FoTarget
from consumers.target import Outcome, Write
from dualwrite import odata
from dualwrite.config import FoConfig
from dualwrite.envelope import Side
from dualwrite.fo import FoClient
from dualwrite.mapping import TargetWrite
from dualwrite.tablemap import load_maps

EXISTS = (
    '{"error": {"code": "", "message": "Write failed for table row of type \'CustCustomerV3Entity\'. Infolog: '
    'Error: Cannot create a record in CustomerV3 (CustCustomerV3Entity). usmf, CH-00178. The record already exists."}}'
)


def test_a_create_answered_the_record_already_exists_is_a_conflict_to_read_not_a_dead_letter() -> None:
    """An earlier create whose answer was lost (a 502, a dropped connection) made the row: F&O answers the
    repeated create with 400 and an infolog, which must lead to a read and a new plan, not to the DLQ."""
    maps = load_maps()
    auth = {"token_url": "http://127.0.0.1:1/token", "client_id": "c", "client_secret": "s"}
    target = FoTarget(maps, client=FoClient(FoConfig(url="http://127.0.0.1:2", auth=auth)))
    try:
        w = Write(
            maps["customers"],
            "create",
            TargetWrite("customers", Side.FO, "upsert", "usmf", {"CustomerAccount": "CH-00178"}),
        )
        part = odata.BatchPart("POST", "CustomersV3", {})
        assert target.judge(w, part, odata.PartResult(400, {}, EXISTS)).outcome == Outcome.CONFLICT
        other = odata.PartResult(400, {}, '{"error": {"code": "", "message": "Field X is not valid."}}')
        assert target.judge(w, part, other).outcome == Outcome.FAILED
    finally:
        target.close()
