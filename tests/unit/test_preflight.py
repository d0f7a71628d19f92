"""Start-up system checks (issue 13): IP forwarding, and the routing table read degrading
gracefully.  /proc/sys and netlink are faked; the netns test reads real ones."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from ipsecd.cli.ipsecd import main
from ipsecd.config.warnings import ConnectedRoute
from ipsecd.daemon import preflight
from ipsecd.daemon.preflight import Finding, forwarding_findings, log_findings
from tests.unit.test_config_support import BASE, parse, write_secret_files

V6 = BASE.replace("remote_ts: [10.2.0.0/24]", 'remote_ts: [10.2.0.0/24, "2001:db8:2::/64"]')
LAN = ConnectedRoute(ipaddress.ip_network("10.1.0.0/24"), "eth1", ipaddress.ip_address("10.1.0.1"))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_secret_files(tmp_path)
    return tmp_path


class FakeSysctl:
    def __init__(self, values: dict[str, str | None], fail: int | None = None) -> None:
        self.values = dict(values)
        self.fail = fail
        self.written: list[tuple[str, str]] = []

    def read(self, name: str) -> str | None:
        return self.values.get(name)

    def write(self, name: str, value: str) -> None:
        if self.fail is not None:
            raise OSError(self.fail, "Read-only file system")
        self.written.append((name, value))
        self.values[name] = value


OFF4 = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"}
ON = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}


def test_forwarding_on_says_nothing() -> None:
    sysctl = FakeSysctl(ON)
    assert forwarding_findings(parse(V6), apply=True, read=sysctl.read, write=sysctl.write) == []


def test_forwarding_off_says_exactly_what_to_run() -> None:
    sysctl = FakeSysctl(OFF4)
    (found,) = forwarding_findings(parse(BASE), apply=True, read=sysctl.read, write=sysctl.write)
    assert found.level == "warning"
    assert found.message == (
        "IP forwarding is off (net.ipv4.ip_forward = 0): this gateway drops the packets it"
        " should pass between its LAN and the tunnel; turn it on with"
        " `printf 'net.ipv4.ip_forward = 1\\n' > /etc/sysctl.d/60-ipsecd.conf && sysctl -p"
        " /etc/sysctl.d/60-ipsecd.conf`, or set gateway.set_forwarding: true (which cannot"
        " write /proc/sys under systemd's ProtectKernelTunables=yes, as in ipsecd.service:"
        " there only the sysctl.d file works)"
    )
    assert sysctl.written == []  # never without gateway.set_forwarding


def test_ipv6_forwarding_is_checked_only_with_ipv6_selectors() -> None:
    sysctl = FakeSysctl({"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"})
    assert forwarding_findings(parse(BASE), apply=False, read=sysctl.read) == []
    (found,) = forwarding_findings(parse(V6), apply=False, read=sysctl.read)
    assert "(net.ipv6.conf.all.forwarding = 0)" in found.message
    assert "printf 'net.ipv6.conf.all.forwarding = 1\\n'" in found.message


SET = BASE.replace("  listen: [192.0.2.1]\n", "  listen: [192.0.2.1]\n  set_forwarding: true\n")


def test_set_forwarding_turns_it_on_at_start() -> None:
    sysctl = FakeSysctl(OFF4)
    found = forwarding_findings(parse(SET), apply=True, read=sysctl.read, write=sysctl.write)
    assert sysctl.written == [("net.ipv4.ip_forward", "1")]
    assert found == [
        Finding("info", "IP forwarding turned on: net.ipv4.ip_forward = 1 (gateway.set_forwarding)")
    ]


def test_check_never_writes() -> None:
    sysctl = FakeSysctl(OFF4)
    (found,) = forwarding_findings(parse(SET), apply=False, read=sysctl.read, write=sysctl.write)
    assert sysctl.written == [] and found.level == "info"
    assert "ipsecd turns it on at start" in found.message


def test_set_forwarding_under_protect_kernel_tunables() -> None:
    sysctl = FakeSysctl(OFF4, fail=errno.EROFS)
    (found,) = forwarding_findings(parse(SET), apply=True, read=sysctl.read, write=sysctl.write)
    assert found.level == "warning"
    assert found.message.startswith(
        "gateway.set_forwarding: cannot write net.ipv4.ip_forward (Read-only file system;"
        " systemd's ProtectKernelTunables=yes makes /proc/sys read-only): IP forwarding stays"
        " off; turn it on with `printf 'net.ipv4.ip_forward = 1\\n' > /etc/sysctl.d/"
    )


def test_unreadable_sysctl_is_a_note() -> None:
    (found,) = forwarding_findings(parse(BASE), apply=True, read=lambda _name: None)
    assert found == Finding("info", "cannot read net.ipv4.ip_forward: IP forwarding not checked")


def test_routing_table_unreadable_degrades_to_a_note() -> None:
    def no_netlink() -> list[ConnectedRoute]:
        raise PermissionError(errno.EACCES, "Permission denied")

    text = BASE.replace(
        "  listen: [192.0.2.1]\n", "  listen: [192.0.2.1]\n  addresses: [10.1.0.1/24]\n"
    )
    found = preflight.preflight(parse(text), routes=no_netlink, read=FakeSysctl(ON).read)
    assert [f.level for f in found] == ["info", "warning"]
    assert found[0].message.startswith("routing table not read ([Errno 13] Permission denied)")
    assert "overlaps local_ts 10.1.0.0/24" in found[1].message  # config-only checks still run


def test_daemon_logs_findings_at_their_level(monkeypatch) -> None:
    sysctl = FakeSysctl(OFF4)
    monkeypatch.setattr(preflight, "connected_routes", lambda: [LAN])
    monkeypatch.setattr(preflight, "read_sysctl", sysctl.read)
    monkeypatch.setattr(preflight, "write_sysctl", sysctl.write)
    logged: list[tuple[str, str]] = []

    class Log:
        def warning(self, message: str) -> None:
            logged.append(("warning", message))

        def info(self, message: str) -> None:
            logged.append(("info", message))

    log_findings(
        parse(
            SET.replace(
                "  set_forwarding: true\n", "  set_forwarding: true\n  addresses: [10.1.0.1/24]\n"
            )
        ),
        Log(),
    )
    assert [level for level, _ in logged] == ["warning", "info"]
    assert "10.1.0.0/24 on eth1" in logged[0][1]
    assert sysctl.written == [("net.ipv4.ip_forward", "1")]


def test_ipsecd_check_prints_warnings_and_exits_0(in_tmp, monkeypatch, capsys) -> None:
    monkeypatch.setattr(preflight, "connected_routes", lambda: [LAN])
    monkeypatch.setattr(preflight, "read_sysctl", FakeSysctl(OFF4).read)
    (in_tmp / "t.yaml").write_text(
        BASE.replace(
            "  listen: [192.0.2.1]\n", "  listen: [192.0.2.1]\n  addresses: [10.1.0.1/24]\n"
        )
    )
    assert main(["check", "t.yaml"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "t.yaml: OK, 1 peer(s), 2 warnings"
    lines = err.splitlines()
    assert lines[0].startswith("warning: t.yaml:3: gateway.addresses[0]: 10.1.0.1/24 gives")
    assert lines[1].startswith("warning: IP forwarding is off (net.ipv4.ip_forward = 0)")
