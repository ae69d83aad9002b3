"""qboot-tcpsrv: a tcpserver-compatible core that systemd can supervise."""
