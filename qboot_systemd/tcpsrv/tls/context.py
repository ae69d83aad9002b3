"""The server's SSLContext: defaults that pass a current audit, built from read files."""

from __future__ import annotations

import ssl

from .certs import CertError, CertPaths, Material, load_into

# Mozilla's "intermediate" TLS 1.2 suites (server-side TLS guidelines, version 5.7); the
# TLS 1.3 suites are OpenSSL's defaults, which are those. The DHE suites need DH
# parameters, which we do not load: OpenSSL leaves them out and ECDHE is used.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def server_context(paths: CertPaths, material: Material, ciphers: str | None) -> ssl.SSLContext:
    """TLS 1.2 and 1.3 only, no compression, no renegotiation, the client's cipher order
    (Mozilla: every suite offered is good); CIPHERS (sslserver's) replaces the TLS 1.2
    list. A client certificate is asked for when there is a CCAFILE, and checked
    against it; a client without one is served (SSL_CLIENT_VERIFY=NONE)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # A client's TCP FIN without close_notify ends the chain's input like close_notify
    # (as it does under tcpserver), and what the chain still writes reaches the client;
    # without this OpenSSL 3 fails the connection and drops the chain's last reply.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.set_ciphers(ciphers or INTERMEDIATE_CIPHERS)
    except ssl.SSLError:
        raise CertError(f"CIPHERS {ciphers!r}: no cipher OpenSSL knows in it") from None
    load_into(context, paths, material)
    if material.cca is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def check(paths: CertPaths, ciphers: str | None = None) -> CertError | None:
    """What qbootctl verify and status can show for a service: the one-line problem with
    its certificate files (read as the caller may: as root, as the server would), or None."""
    from .certs import read_material

    try:
        server_context(paths, read_material(paths), ciphers)
    except CertError as error:
        return error
    return None
