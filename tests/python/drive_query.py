"""Drives `unbind-gateway query` through a pseudo-terminal, as a person at a terminal would:
a mistyped number, then the right one; the ID characters; a wrong code, then the right one (read
from the registry's SMS file, like reading the phone); "previous" at the row prompt; "y" to
confirm; then the watch until its tally. Prints the whole transcript; exits non-zero if a step's
prompt never came. Standard library only.

Usage: drive_query.py BINARY ENDPOINT SMS_FILE
"""

import json
import os
import pty
import select
import subprocess
import sys
import time

BINARY, ENDPOINT, SMS_FILE = sys.argv[1:4]
PHONE = "+8613800138000"
transcript = []


def newest_code():
    code = None
    with open(SMS_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                msg = json.loads(line)
                if msg.get("phone_number") == PHONE and msg.get("code"):
                    code = msg["code"]
    return code


def main() -> int:
    master, slave = pty.openpty()
    env = dict(os.environ, NO_COLOR="1", COLUMNS="80")
    child = subprocess.Popen(
        [BINARY, "query", "--endpoint", ENDPOINT],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = ""

    def wait_for(text, within=30.0):
        nonlocal seen
        deadline = time.monotonic() + within
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"never saw {text!r}")
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    chunk = os.read(master, 65536).decode("utf-8", "replace")
                except OSError:
                    raise TimeoutError(f"the query ended before {text!r}")
                if not chunk:
                    raise TimeoutError(f"the query ended before {text!r}")
                transcript.append(chunk)
                seen += chunk
        # What follows is matched from here on.
        seen = seen[seen.index(text) + len(text):]

    def say(answer):
        transcript.append(f"\n<<{answer}>>\n")
        os.write(master, (answer + "\n").encode())

    try:
        wait_for("Mobile number: ")
        say("1380013800")  # one digit short
        wait_for("try again")
        wait_for("Mobile number: ")
        say("13800138000")
        wait_for("Last six characters of the holder's ID: ")
        say("12345X")
        wait_for("Code from the SMS")
        say("000000")
        wait_for("Code from the SMS")
        code = newest_code()
        if code is None:
            raise TimeoutError("no code in the SMS file")
        say(code)
        wait_for("Unbind which accounts?")
        say("previous")
        wait_for("[y/N]")
        say("y")
        wait_for("Done: ", within=90.0)
        status = child.wait(timeout=30)
    except TimeoutError as e:
        child.kill()
        child.wait()
        print("".join(transcript))
        print(f"DRIVER: {e}", file=sys.stderr)
        return 2
    # Whatever is left after the tally.
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536).decode("utf-8", "replace")
        except OSError:
            break
        if not chunk:
            break
        transcript.append(chunk)
    print("".join(transcript))
    print(f"EXIT {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
