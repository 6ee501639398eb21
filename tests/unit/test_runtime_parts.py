"""Pure parts of the runtime layer: references, process resolution, CRI log lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.domain import CommandSpec, LogStream, PullPolicy, Resources
from agent.runtime.bundle import build_config, resolve_process
from agent.runtime.cgroups import oom_kill_count
from agent.runtime.crilog import parse_line
from agent.runtime.errors import ImagePullError
from agent.runtime.images import ImageConfig, ImageStore, normalize_reference

IMAGE = ImageConfig(
    entrypoint=("/entry",), cmd=("default-arg",), env=("PATH=/bin", "A=image"), workdir="/srv"
)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("org/app:2", "docker.io/org/app:2"),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
        ("localhost/app:1", "localhost/app:1"),
        ("ghcr.io/org/app@sha256:" + "a" * 64, "ghcr.io/org/app@sha256:" + "a" * 64),
        ("oci:/images/busybox", "oci:/images/busybox:latest"),
        ("oci:/images/busybox:v1", "oci:/images/busybox:v1"),
    ],
)
def test_references_are_normalized_as_docker_does(name: str, reference: str) -> None:
    assert normalize_reference(name) == reference


@pytest.mark.parametrize(
    ("command", "argv", "cwd"),
    [
        (CommandSpec(), ("/entry", "default-arg"), "/srv"),
        (CommandSpec(args=("x",)), ("/entry", "x"), "/srv"),
        (CommandSpec(entrypoint=("/bin/sh",)), ("/bin/sh",), "/srv"),
        (
            CommandSpec(entrypoint=("/bin/sh", "-c"), args=("echo",), workdir="/"),
            ("/bin/sh", "-c", "echo"),
            "/",
        ),
    ],
)
def test_the_command_falls_back_to_the_image_config(
    command: CommandSpec, argv: tuple[str, ...], cwd: str, tmp_path: Path
) -> None:
    process = resolve_process(IMAGE, command, {"A": "spec", "B": "2"}, tmp_path)
    assert process.args == argv
    assert process.cwd == cwd
    # No /etc/passwd in the image: HOME is /, as the runtimes would have it.
    assert process.env == ("PATH=/bin", "A=spec", "B=2", "HOME=/")


def test_users_resolve_against_the_image(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    for user, ids in [("app", (1000, 1001)), ("app:staff", (1000, 50)), ("7:8", (7, 8))]:
        process = resolve_process(ImageConfig(cmd=("/x",), user=user), CommandSpec(), {}, tmp_path)
        assert (process.uid, process.gid) == ids
    with pytest.raises(ValueError):
        resolve_process(ImageConfig(cmd=("/x",), user="ghost"), CommandSpec(), {}, tmp_path)


def home_of(rootfs: Path, user: str, env: dict[str, str] | None = None) -> str:
    """The HOME that the container's process gets, as config.json gives it."""
    process = resolve_process(ImageConfig(cmd=("/x",), user=user), CommandSpec(), env or {}, rootfs)
    homes = [item for item in process.env if item.startswith("HOME=")]
    assert len(homes) == 1, process.env
    return homes[0].removeprefix("HOME=")


def test_every_process_gets_a_home_so_no_runtime_reads_the_containers_passwd(
    tmp_path: Path,
) -> None:
    """youki, runc and crun each look HOME up in the container's /etc/passwd as they
    create the container when the process's env has none (youki and runc also when it is
    empty): a read the agent cannot bound, of a file an image or a volume may make
    endless. So the agent always sets it, from the image's table read its own way."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "other:x:4242:4343::/home/other:/bin/sh\n"
        "app:x:4242:4343::/home/app:/bin/sh\n"
        "nohome:x:77:77:::/bin/sh\n"
    )
    assert home_of(tmp_path, "") == "/root"
    assert home_of(tmp_path, "0:0") == "/root"
    # A name gets its own entry's home (as Docker gives it), a number the first entry's.
    assert home_of(tmp_path, "app") == "/home/app"
    assert home_of(tmp_path, "4242") == "/home/other"
    assert home_of(tmp_path, "77") == "/"
    assert home_of(tmp_path, "1234") == "/"
    # The job's env (or the image's) decides when it names one; empty, it names none.
    assert home_of(tmp_path, "app", {"HOME": "/work"}) == "/work"
    assert home_of(tmp_path, "app", {"HOME": ""}) == "/home/app"
    image = ImageConfig(cmd=("/x",), env=("PATH=/bin", "HOME=/srv"))
    assert "HOME=/srv" in resolve_process(image, CommandSpec(), {}, tmp_path).env
    (tmp_path / "etc" / "passwd").unlink()
    assert home_of(tmp_path, "") == "/"


def test_no_command_anywhere_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        resolve_process(ImageConfig(), CommandSpec(), {}, tmp_path)


def test_config_is_unprivileged_with_its_own_cgroup(tmp_path: Path) -> None:
    process = resolve_process(IMAGE, CommandSpec(), {}, tmp_path)
    config = build_config(process, tmp_path, "host", "/jobagent/c1")
    assert config["process"]["noNewPrivileges"] is True
    assert "CAP_SYS_ADMIN" not in config["process"]["capabilities"]["bounding"]
    assert config["linux"]["cgroupsPath"] == "/jobagent/c1"
    assert {"type": "network"} in config["linux"]["namespaces"]
    assert config["root"]["path"] == str(tmp_path)
    assert "/proc/kcore" in config["linux"]["maskedPaths"]
    assert "/sys/devices/virtual/powercap" in config["linux"]["maskedPaths"]
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_extra_capabilities_add_to_the_default_and_privileged_drops_the_fences(
    tmp_path: Path,
) -> None:
    process = resolve_process(IMAGE, CommandSpec(), {}, tmp_path)
    added = build_config(process, tmp_path, "h", "/j/c", extra_capabilities=["CAP_NET_ADMIN"])
    bounding = added["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in bounding and "CAP_CHOWN" in bounding
    assert "CAP_SYS_ADMIN" not in bounding and "seccomp" in added["linux"]
    privileged = build_config(process, tmp_path, "h", "/j/c", privileged=True)
    assert "CAP_SYS_ADMIN" in privileged["process"]["capabilities"]["bounding"]
    assert privileged["process"]["noNewPrivileges"] is False
    assert not {"seccomp", "maskedPaths", "readonlyPaths"} & privileged["linux"].keys()


def test_tmp_gets_its_size_unless_the_job_mounts_its_own(tmp_path: Path) -> None:
    process = resolve_process(IMAGE, CommandSpec(), {}, tmp_path)
    sized = build_config(process, tmp_path, "h", "/j/c", tmp_size=64 << 20)
    (tmp,) = [mount for mount in sized["mounts"] if mount["destination"] == "/tmp"]
    assert f"size={64 << 20}" in tmp["options"]
    own = {"destination": "/tmp/", "type": "tmpfs", "source": "tmpfs", "options": ["size=1g"]}
    replaced = build_config(process, tmp_path, "h", "/j/c", mounts=[own], tmp_size=64 << 20)
    assert [m for m in replaced["mounts"] if m["destination"].rstrip("/") == "/tmp"] == [own]


def test_cri_lines_parse_with_nanoseconds_and_partials() -> None:
    line = parse_line(b"2026-11-26T11:35:25.141277578+00:00 stderr P half a line")
    assert line is not None
    assert line.time == datetime(2026, 11, 26, 11, 35, 25, 141277, tzinfo=UTC)
    assert (line.stream, line.message, line.partial) == (LogStream.STDERR, "half a line", True)
    empty = parse_line(b"2026-11-26T11:35:25Z stdout F")
    assert empty is not None and empty.message == "" and not empty.partial
    assert parse_line(b"garbage") is None
    assert parse_line(b"2026-11-26T11:35:25Z stdin F x") is None


def test_oom_kills_are_read_from_either_cgroup_hierarchy(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "jobagent" / "c1"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    v2 = tmp_path / "jobagent" / "c2"
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert oom_kill_count("/jobagent/c1", tmp_path) == 2
    assert oom_kill_count("/jobagent/c2", tmp_path) == 1
    assert oom_kill_count("/jobagent/gone", tmp_path) == 0


def test_limits_become_cgroup_settings(tmp_path: Path) -> None:
    process = resolve_process(IMAGE, CommandSpec(), {}, tmp_path)
    config = build_config(
        process,
        tmp_path,
        "h",
        "/jobagent/c",
        Resources(cpu=0.5, memory_bytes=1 << 26, pids_limit=9),
    )
    resources = config["linux"]["resources"]
    assert resources["cpu"] == {"quota": 50000, "period": 100000}
    assert resources["memory"] == {"limit": 1 << 26, "swap": 1 << 26}
    assert resources["pids"] == {"limit": 9}


async def test_pulls_pass_tls_and_credentials_only_where_configured(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    async def fake_run(argv: list[str], timeout: float | None = None) -> str:
        calls.append(argv)
        return "sha256:" + "1" * 64

    store = ImageStore(
        tmp_path,
        insecure_registries=frozenset({"127.0.0.1:5000"}),
        auth_file=tmp_path / "auth.json",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("agent.runtime.images.run", fake_run)
        with pytest.raises(ImagePullError):  # the fake copy leaves nothing in the layout
            await store.ensure("127.0.0.1:5000/app:1", PullPolicy.ALWAYS)
        with pytest.raises(ImagePullError):
            await store.ensure("ghcr.io/org/app:1", PullPolicy.ALWAYS)
    local, remote = calls
    assert "--src-tls-verify=false" in local and f"--src-authfile={tmp_path / 'auth.json'}" in local
    assert "--src-tls-verify=false" not in remote and "docker://ghcr.io/org/app:1" in remote
