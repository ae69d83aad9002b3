"""Apply: make what runs equal to what bootctrl says, once systemd has loaded it.

  stamps     what the generator writes for apply and reads back from it (config stamps,
             the reconcile trigger, last good and refused settings); the generator imports
             it, so it stays light: no pathlib, no D-Bus, no json
  observe    what systemd loaded and what runs (D-Bus, /proc, the generator's output)
  health     one judgement per service from what a client gets
  plan       pure decisions over what was observed: the changes, the status drift, what
             fails reload-config, how a broken service is treated, the uninstall order
  reconcile  the lock, carrying a plan out as systemd jobs, the journal lines
  lastgood   the last good drop-ins: remembered in /run, kept on disk across reboots

This file imports nothing: the generator pays for the package, not for its rooms.
"""

SEND = "send"  # qmail-send, where a command or the reconcile names a tcp service
