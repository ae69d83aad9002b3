"""TLS in qboot-tcpsrv: certificates (certs), the context's defaults (context), the
handshake and the relay in the server's loop (relay), the STARTTLS shim for an SMTP
server without it (smtp), and sslserver's variables for the chain (environ)."""
