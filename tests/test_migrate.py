"""qbootctl migrate: the old boot script masked, the rest named (a fake root and /proc)."""

from __future__ import annotations

import os
from pathlib import Path

from qboot_systemd import migrate


def test_migrate_masks_the_old_boot_script_and_names_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/init.d").mkdir(parents=True)
    (root / "etc/init.d/qmaild").symlink_to("/var/qmail/etc/eqmaild")
    (root / "etc/init.d/cron").write_text("#!/bin/sh\nexec cron\n")
    (root / "etc/rc2.d").mkdir()
    (root / "etc/rc2.d/S20qmaild").symlink_to("../init.d/qmaild")
    (root / "service/qmail-smtpd").mkdir(parents=True)
    (root / "service/qmail-smtpd/run").write_text("#!/bin/sh\nexec tcpserver 0 25 qmail-smtpd\n")
    proc = tmp_path / "proc"
    for pid, comm, cgroup in (
        (100, "qmail-send", "0::/system.slice/qmaild.service"),
        (200, "qmail-send", "0::/system.slice/qmail-send.service"),
        (300, "tcpserver", "1:name=systemd:/system.slice/qmail-tcpd@smtp.service\n0::/x"),
        (400, "bash", "0::/user.slice"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "cgroup").write_text(cgroup + "\n")
    lines = migrate.migrate(root, proc)
    assert os.readlink(root / "etc/systemd/system/qmaild.service") == "/dev/null"
    assert not (root / "etc/systemd/system/cron.service").exists()
    assert lines[0].startswith("migrate: masked qmaild.service")
    # The seed's /etc/init.d/qmaild is not gone without a word: eqmaild replaces it.
    assert lines[1].startswith(f"migrate: {root}/etc/init.d/qmaild is replaced by eqmaild: ")
    assert lines[1].endswith(f"ln -sf /usr/bin/eqmaild {root}/etc/init.d/qmaild")
    assert lines[2].endswith(f"{root}/etc/rc2.d/S20qmaild")
    service = root / "service/qmail-smtpd"
    assert lines[3].endswith(f"svc -dx {service} {service}/log; rm {service}")
    assert lines[4].startswith("migrate: qmail-send runs as pid 100 outside qboot-systemd")
    assert len(lines) == 5
    assert migrate.migrate(root, None)[0].startswith("migrate: old rc links")  # masked once
    other = migrate.foreign_queue_runner(proc)
    assert other is not None and other.pid == 100
