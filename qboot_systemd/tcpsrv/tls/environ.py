"""sslserver's variables (ucspi-ssl-environment(7), its -s set) for the chain, from a
finished handshake. ucspi-ssl has no name for the verification result: mod_ssl's
SSL_CLIENT_VERIFY is used (NONE or SUCCESS: a certificate that fails the check fails
the handshake)."""

from __future__ import annotations

import ssl

# OpenSSL's short names, as X509_NAME_oneline() writes a DN (`/C=DE/CN=host`).
_SHORT = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
    "userId": "UID",
    "serialNumber": "serialNumber",
}

Dn = tuple[tuple[tuple[str, str], ...], ...]


def oneline(name: Dn) -> str:
    return "".join(f"/{_SHORT.get(key, key)}={value}" for entry in name for key, value in entry)


def ssl_environment(tls: ssl.SSLObject, client_ca: bool) -> dict[str, str]:
    env = {"SSL_VERSION_LIBRARY": ssl.OPENSSL_VERSION, "SSL_VERSION_INTERFACE": "qboot-tcpsrv"}
    version = tls.version()
    if version is not None:
        env["SSL_PROTOCOL"] = version
    cipher = tls.cipher()
    if cipher is not None:
        name, _, bits = cipher
        env["SSL_CIPHER"] = name
        env["SSL_CIPHER_USEKEYSIZE"] = env["SSL_CIPHER_ALGKEYSIZE"] = str(bits)
        env["SSL_CIPHER_EXPORT"] = "true" if bits < 56 else "false"
    if client_ca:
        peer = tls.getpeercert()
        if peer:
            env["SSL_CLIENT_VERIFY"] = "SUCCESS"
            env["SSL_CLIENT_S_DN"] = oneline(peer.get("subject", ()))  # type: ignore[arg-type]
            env["SSL_CLIENT_I_DN"] = oneline(peer.get("issuer", ()))  # type: ignore[arg-type]
            serial = peer.get("serialNumber")
            if isinstance(serial, str):
                env["SSL_CLIENT_M_SERIAL"] = serial
        else:
            env["SSL_CLIENT_VERIFY"] = "NONE"
    return env
