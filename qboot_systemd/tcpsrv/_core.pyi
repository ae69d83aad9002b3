from collections.abc import Callable, Sequence

def accept(listener_fd: int, /) -> tuple[int, tuple[str, int]]: ...
def local_address(fd: int, /) -> tuple[str, int]: ...
def close(fd: int, /) -> None: ...
def set_option(fd: int, level: int, name: int, value: int | None, /) -> None: ...
def send_now(fd: int, data: bytes, /) -> None: ...
def djb_hash(key: bytes, /) -> int: ...
def trim_heap() -> bool: ...

RUN_TIMEOUT: int
RUN_SIGNAL: int
RUN_RESOURCE: int
RUN_DRAINED: int
RUN_WATCHED: int

class Spawner:
    def __init__(
        self, argv: Sequence[bytes], base_env: Sequence[bytes], default_signals: Sequence[int]
    ) -> None: ...
    def spawn(
        self, extra: Sequence[bytes], fd: int, base: Sequence[bytes] | None = None, /
    ) -> int: ...

class SpawnPool:
    def __init__(self, spawner: object, threads: int) -> None: ...
    def submit(
        self, ident: int, extra: Sequence[bytes], fd: int, base: Sequence[bytes] | None = None, /
    ) -> None: ...
    def finished(self) -> list[tuple[int, int, int]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

# ConnectionLoop.admit()'s names: local, remote, info, each as bytes and as the -v lines show it
HeldNames = tuple[
    bytes | None, bytes | None, bytes | None, bytes | None, bytes | None, bytes | None
]

class ConnectionLoop:
    def __init__(
        self,
        *,
        pool: object,
        wake_fd: int,
        log_fd: int,
        limit: int,
        verbosity: int,
        local_host: bytes | None,
        local_host_log: bytes,
        banner: bytes,
        program_log: bytes,
        ipv6_env: bool,
        nodelay: bool,
        kill_ip_options: bool,
        unmap_in_log: bool,
        hold: Callable[[int, str, int, str, int], HeldNames | bool | None] | None = None,
        deny_status: int,
        drop_status: int,
        accepts_per_wake: int,
        ended: Callable[[str], None] | None = None,
        screen: Callable[..., bool] | None = None,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...
    def add_listener(self, fd: int, local: tuple[str, int] | None, /) -> None: ...
    def set_rules(
        self,
        path: bytes | None,
        reload: Callable[[], tuple[tuple[int, int, int, int] | None, bytes | None, bytes | None]]
        | None,
        format_error_line: bytes,
        /,
    ) -> None: ...
    def run(self, timeout: float, /) -> tuple[int, int]: ...
    def pause(self, paused: bool, /) -> None: ...
    def stop(self) -> None: ...
    def counts(self) -> tuple[int, int, int, int, int]: ...
    def watch(self, fd: int, /) -> None: ...
    def admit(
        self,
        fd: int,
        local_ip: str,
        local_port: int,
        remote_ip: str,
        remote_port: int,
        names: HeldNames,
        screened: bool = False,
        /,
    ) -> None: ...
