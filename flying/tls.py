"""Transport security from settings: TLS for the servers, mutual TLS between router and agents.

A service's settings name three PEM files: ``tls_cert`` and ``tls_key`` (its certificate: what
it serves with, and what it presents as a client when it dials a peer) and ``tls_ca`` (the CA
its peers' certificates are signed by). An agent with ``tls_ca`` requires every client (the
router, another agent pulling KV) to present a certificate signed by it: mutual TLS. The router
dials agents over TLS when its ``tls_ca`` is set, presenting its own certificate. Certificates
must name the address they are dialled by (a SAN with the host or IP in ``--agent``).

Files are read once at start; a missing or half-given pair is refused with a message naming the
setting (`TLSFiles.load`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from flying.settings import SettingsError


@dataclass(frozen=True)
class TLSFiles:
    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    cert_path: str = ""
    key_path: str = ""

    @classmethod
    def load(cls, cert: str, key: str, ca: str, section: str) -> TLSFiles:
        if bool(cert) != bool(key):
            raise SettingsError(f"[{section}] tls_cert and tls_key go together: "
                                  f"give both or neither")

        def read(path: str, name: str) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise SettingsError(f"[{section}] {name}: cannot read {path!r}: "
                                      f"{e.strerror}") from None
        return cls(read(cert, "tls_cert"), read(key, "tls_key"), read(ca, "tls_ca"), cert, key)

    @property
    def serving(self) -> bool:
        return self.cert is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS for a gRPC server (None: plaintext); with a CA, client certificates required."""
        if not self.serving:
            return None
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=self.ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS for dialling a peer (None: plaintext): verify it by the CA, present our cert."""
        if self.ca is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def aio_channel(self, address: str, options=()) -> grpc.aio.Channel:
        creds = self.channel_credentials()
        if creds is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, creds, options=options)

    def add_port(self, server, address: str) -> int:
        creds = self.server_credentials()
        return (server.add_secure_port(address, creds) if creds is not None
                else server.add_insecure_port(address))


def server_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """gRPC server options: the largest request message accepted (RESOURCE_EXHAUSTED above)."""
    return [("grpc.max_receive_message_length", max_request_bytes)]
