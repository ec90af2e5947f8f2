"""An unbind.v1.AppAdapter in Python: what an app vendor writes so the unbind gateway can find
the accounts bound to a phone number, unbind one, report on an unbind, and hear of recycled
numbers. The accounts live in memory here; a real adapter asks the app's own database.

Run (stubs generated from proto/ first, see README.md):
    python adapter.py --port 7001 --stubs gen
"""

import argparse
import re
import sys
import threading
import uuid
from concurrent import futures

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--port", type=int, default=7001)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--stubs", default="gen", help="where protoc wrote unbind/v1/*_pb2*.py")
args = parser.parse_args()
sys.path.insert(0, args.stubs)
from unbind.v1 import adapter_pb2 as pb, adapter_pb2_grpc as rpc  # noqa: E402

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def day(text):
    stamp = Timestamp()
    stamp.FromJsonString(text + "T00:00:00Z")
    return stamp


# The app's accounts, by phone number: (account_id, masked hint, when the number was bound).
ACCOUNTS = {
    "+8613800138000": [
        ("acct-1001", "z***g", day("2019-05-01")),  # bound by a previous holder of the number
        ("acct-1002", "l***i", day("2024-06-01")),  # bound by the current holder
    ],
}


class Adapter(rpc.AppAdapterServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.unbinds = {}  # idempotency_key -> UnbindAccountResponse
        self.by_ref = {}  # vendor_ref -> UnbindAccountResponse
        self.batches = {}  # batch_id -> accepted count

    def FindAccounts(self, request, context):
        # A malformed number is the caller's mistake; a number without accounts is not.
        if not E164.match(request.phone_number):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "phone_number must be E.164")
        with self.lock:
            found = ACCOUNTS.get(request.phone_number, [])
            return pb.FindAccountsResponse(
                accounts=[
                    pb.AdapterAccount(
                        account_id=account_id,
                        display_hint=hint,
                        bound_at=bound_at,
                        unbind_supported=True,
                    )
                    for account_id, hint, bound_at in found
                ]
            )

    def UnbindAccount(self, request, context):
        if not request.idempotency_key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key is required")
        with self.lock:
            # The same key is the same request: the first answer, whatever happened since.
            if request.idempotency_key in self.unbinds:
                return self.unbinds[request.idempotency_key]
            accounts = ACCOUNTS.get(request.phone_number, [])
            kept = [a for a in accounts if a[0] != request.account_id]
            ref = "v-" + uuid.uuid4().hex
            if len(kept) == len(accounts):
                answer = pb.UnbindAccountResponse(
                    state=pb.UnbindAccountResponse.REJECTED,
                    vendor_ref=ref,
                    detail="no such account is bound to this number",
                )
            else:
                # NUMBER_RECYCLED asks to detach the number and keep the account for its owner;
                # HOLDER_REQUEST is the owner asking. Both unbind the number here.
                ACCOUNTS[request.phone_number] = kept
                answer = pb.UnbindAccountResponse(
                    state=pb.UnbindAccountResponse.DONE, vendor_ref=ref
                )
            self.unbinds[request.idempotency_key] = answer
            self.by_ref[ref] = answer
            return answer

    def GetUnbindStatus(self, request, context):
        with self.lock:
            answer = self.by_ref.get(request.vendor_ref) or self.unbinds.get(
                request.idempotency_key
            )
        if answer is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such unbind")
        return answer

    def NotifyNumbersRecycled(self, request, context):
        with self.lock:
            if request.batch_id not in self.batches:
                # A re-issued number's new holder is not the owner of accounts bound before:
                # a real app would ask them to re-verify, or detach the number.
                self.batches[request.batch_id] = len(request.numbers)
            return pb.NotifyNumbersRecycledResponse(accepted=self.batches[request.batch_id])


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    rpc.add_AppAdapterServicer_to_server(Adapter(), server)
    address = f"{args.host}:{args.port}"
    server.add_insecure_port(address)  # production: server.add_secure_port with mTLS
    server.start()
    print(f"adapter listening on {address}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
