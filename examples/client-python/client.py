"""A client of the unbind gateway in Python, as a carrier app or a government portal integrates
it: verify a number (the ID characters, then the SMS code), look up every account bound to it,
unbind the previous holder's accounts and follow the tickets to the end. Errors are decoded from
their google.rpc details (ErrorInfo reason, BadRequest fields, RetryInfo), as any client should.

Usage (stubs generated from proto/, see README.md):
    python client.py --endpoint 127.0.0.1:50051 --phone 13800138000 --id-last-six 12345X \
        --sms-file /tmp/unbind-demo-XXXX/sms.jsonl [--stubs gen]
"""

import argparse
import json
import sys
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--endpoint", default="127.0.0.1:50051")
parser.add_argument("--phone", required=True)
parser.add_argument("--id-last-six", required=True)
parser.add_argument("--sms-file", required=True, help="the demo registry's sms.jsonl")
parser.add_argument("--stubs", default="gen")
args = parser.parse_args()
sys.path.insert(0, args.stubs)
from unbind.v1 import gateway_pb2 as pb, gateway_pb2_grpc as rpc  # noqa: E402

FINAL = {pb.UnbindTicket.COMPLETED, pb.UnbindTicket.REJECTED, pb.UnbindTicket.FAILED}


def explain(error: grpc.RpcError) -> dict:
    """The gateway's error in parts a program can act on: code, reason, fields, retry delay."""
    told = {"code": error.code().name, "message": error.details()}
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            told["reason"] = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            told["fields"] = [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            told["retry_after_s"] = retry.retry_delay.seconds
    return told


def code_sent(after_line: int) -> str:
    """The demo registry writes each SMS as a JSON line; the code is its own field."""
    for _ in range(100):
        with open(args.sms_file, encoding="utf-8") as f:
            lines = f.readlines()[after_line:]
        for line in reversed(lines):
            msg = json.loads(line)
            if msg.get("code") and msg["phone_number"].endswith(args.phone[-11:]):
                return msg["code"]
        time.sleep(0.1)
    raise SystemExit("no SMS code arrived")


def main() -> int:
    gateway = rpc.AccountGatewayStub(grpc.insecure_channel(args.endpoint))
    report = {}
    with open(args.sms_file, encoding="utf-8") as f:
        seen = len(f.readlines())
    started = gateway.StartVerification(
        pb.StartVerificationRequest(phone_number=args.phone, id_last_six=args.id_last_six)
    )
    # A wrong code first, to show what an error carries.
    try:
        gateway.CompleteVerification(
            pb.CompleteVerificationRequest(verification_id=started.verification_id, code="000000")
        )
    except grpc.RpcError as error:
        report["wrong_code"] = explain(error)
    verified = gateway.CompleteVerification(
        pb.CompleteVerificationRequest(
            verification_id=started.verification_id, code=code_sent(seen)
        )
    )
    session = verified.session_token
    report["holder_since"] = verified.holder_since.ToJsonString()[:10]

    listing = gateway.ListLinkedAccounts(pb.ListLinkedAccountsRequest(session_token=session))
    previous = [
        a
        for a in listing.accounts
        if a.ownership == pb.LinkedAccount.PREVIOUS_HOLDER and a.unbind_supported
    ]
    report["accounts"] = listing.total_accounts
    report["complete"] = listing.complete
    report["previous_holder"] = len(previous)

    # One idempotency key per request: a retry after a lost answer sends the same key.
    key = uuid.uuid4().hex
    refs = [a.account_ref for a in previous][:100]
    tickets = gateway.Unbind(
        pb.UnbindRequest(session_token=session, account_refs=refs, idempotency_key=key)
    ).tickets
    ids = [t.ticket_id for t in tickets]
    for _ in range(600):
        tickets = gateway.GetUnbindTickets(
            pb.GetUnbindTicketsRequest(session_token=session, ticket_ids=ids)
        ).tickets
        if all(t.state in FINAL for t in tickets):
            break
        time.sleep(0.1)
    report["tickets"] = {
        pb.UnbindTicket.State.Name(state): sum(1 for t in tickets if t.state == state)
        for state in {t.state for t in tickets}
    }
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
