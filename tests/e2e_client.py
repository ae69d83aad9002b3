"""SMTP client run inside the sandbox: sends N messages, prints a JSON summary.

usage: e2e_client.py HOST PORT COUNT [TAG [RECIPIENT]]"""

from __future__ import annotations

import json
import smtplib
import sys
import time


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tag = sys.argv[4] if len(sys.argv) > 4 else "m"
    rcpt = sys.argv[5] if len(sys.argv) > 5 else "rcpt@example.net"
    # Like an MTA: a session cut off mid-way is sent again (the sender keeps the mail).
    summary = {"sent": 0, "refused": 0, "rejected": 0, "retried": 0, "errors": []}
    for index in range(count):
        for attempt in range(3):
            try:
                with smtplib.SMTP(host, port, timeout=20) as client:
                    client.sendmail(
                        "sender@example.org",
                        [rcpt],
                        f"Subject: {tag}-{index}\r\n\r\nbody {index}\r\n",
                    )
                summary["sent"] += 1
                break
            except ConnectionRefusedError:
                summary["refused"] += 1
                time.sleep(0.05)
            except smtplib.SMTPServerDisconnected as error:
                summary["retried"] += 1
                summary["errors"].append(f"{tag}-{index} attempt {attempt}: {error}"[:200])
            except smtplib.SMTPException as error:
                summary["rejected"] += 1
                summary["errors"].append(f"{tag}-{index}: {error}"[:200])
                break
            except OSError as error:
                summary["errors"].append(f"{tag}-{index} attempt {attempt}: {error}"[:200])
                time.sleep(0.05)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
