"""The unit harness itself: strict parsing and the systemd semantics it claims."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy.unit_harness import (
    ExecCommand,
    HarnessError,
    Host,
    UnitFile,
    boot_order,
    enabled_by_containerfile,
    parse_timespan,
)

DEVICE = Path(__file__).resolve().parents[2] / "deploy" / "device"
TOOLS = ("true", "false", "touch", "mkdir", "sh")


def host(tmp_path: Path) -> Host:
    exes = {f"/usr/bin/{t}": str(shutil.which(t)) for t in TOOLS}
    made = Host(tmp_path / "h", exes)
    made.executables["/usr/bin/systemctl"] = str(made.bin / "systemctl")
    return made


def unit(tmp_path: Path, name: str, text: str) -> UnitFile:
    path = tmp_path / name
    path.write_text(text)
    return UnitFile.load(path)


def service(body: str, unit_section: str = "") -> str:
    return (
        f"[Unit]\nDescription=t\n{unit_section}\n[Service]\nType=oneshot\n{body}\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def test_the_device_units_parse_and_the_containerfile_enables_them() -> None:
    names = enabled_by_containerfile(DEVICE / "Containerfile")
    assert sorted(names) == sorted(p.name for p in DEVICE.glob("*.service"))
    order = [u.name for u in boot_order([UnitFile.load(DEVICE / n) for n in names])]
    assert order == [
        "fdo-device-di.service",
        "fdo-device-onboard.service",
        "fdo-device-report.service",
        "fdo-device-agent.service",
    ]


def test_exec_units_run_in_the_background_with_their_environment(tmp_path: Path) -> None:
    h = host(tmp_path)
    env_file = h.path("/etc/t.env")
    env_file.parent.mkdir(parents=True)
    env_file.write_text("# comment\nB='from file'\nP=/var/x\n")
    bg = unit(
        tmp_path,
        "bg.service",
        service(
            "Environment=A=1 B=unit\nEnvironmentFile=/etc/t.env\nEnvironmentFile=-/etc/missing.env\n"
            "ExecStart=:/usr/bin/sh -c 'echo $A $B $P; while [ ! -e go ]; do sleep 0.05; done; exit 3'\n"
            "Restart=on-failure\nRestartSec=5",
            "ConditionPathExists=!/done",
        ).replace("oneshot", "exec"),
    )
    after = unit(tmp_path, "after.service", service("ExecStart=/usr/bin/touch /after", "After=bg.service"))
    record = h.boot([bg, after])
    # The boot went on past the running unit: the unit after it ran already.
    assert record.units["after.service"].result == "success" and h.path("/after").exists()
    assert record.units["bg.service"].result == "running"
    h.path("/go").touch()
    h.path("/done").touch()  # the restart finds its condition failing
    run = h.wait("bg.service", 10)
    assert run.result == "skipped" and run.restart_delays == [5.0] and run.starts == 1
    assert run.processes[0].returncode == 3
    assert run.processes[0].output.strip() == f"1 from file {h.path('/var/x')}"
    # A new boot cuts the power of what still runs.
    h.path("/done").unlink()
    h.path("/go").unlink()
    h.boot([bg, after])
    h.power_off()
    killed = h.boots[-1].units["bg.service"]
    assert killed.result == "killed" and killed.processes[-1].returncode == -9


@pytest.mark.parametrize(
    "text",
    [
        service("ExecStart=/usr/bin/true\nUser=fdo"),
        service("ExecStart=/usr/bin/true\nPassEnvironment=A"),
        service("ExecStart=/usr/bin/true\nEnvironment=$A"),
        service("ExecStart=/usr/bin/true\nExecStart=/usr/bin/true").replace("oneshot", "exec"),
        service("ExecStart=/usr/bin/true\nExecStartPost=/usr/bin/true").replace("oneshot", "exec"),
        service("ExecStart=/usr/bin/true", "Requires=other.service"),
        service("ExecStart=/usr/bin/true", "ConditionUser=root"),
        service("ExecStart=/usr/bin/true\nRestart=always"),
        "[Service]\nType=simple\nExecStart=/usr/bin/true\n",
        service("ExecStart=/usr/bin/true\n[Timer]\nOnBootSec=1"),
        service("ExecStart=/usr/bin/sh -c 'echo $HOME'"),
        service("ExecStart=/usr/bin/touch /run/%n"),
        service("ExecStart=true"),
        service("ExecStart=/usr/bin/true\nRestartSec=soon"),
        service("ExecStartPre=/usr/bin/true"),
    ],
)
def test_what_the_harness_does_not_implement_fails(tmp_path: Path, text: str) -> None:
    with pytest.raises(HarnessError):
        unit(tmp_path, "x.service", text)


def test_exec_prefixes() -> None:
    cmd = ExecCommand.parse("-:@/usr/bin/sh name -c 'echo $0'", "t")
    assert cmd.ignore_failure and cmd.argv0 == "name" and cmd.words == ("/usr/bin/sh", "-c", "echo $0")
    assert ExecCommand.parse("+/usr/bin/true", "t").privileged == "+"
    assert parse_timespan("1min 30s") == 90 and parse_timespan("infinity") is None


def test_conditions_negation_triggers_and_reset(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.path("/etc").mkdir(parents=True)
    h.path("/etc/a").touch()
    cases = {
        "ConditionPathExists=/etc/a\nConditionPathExists=!/etc/b": "success",
        "ConditionPathExists=!/etc/a": "skipped",
        "ConditionPathExists=|/etc/b\nConditionPathExists=|/etc/a": "success",
        "ConditionPathExists=|/etc/b\nConditionPathExists=|/etc/c": "skipped",
        "ConditionPathExists=/etc/b\nConditionPathExists=": "success",  # reset
        "ConditionPathIsDirectory=/etc\nConditionFileNotEmpty=!/etc/a": "success",
    }
    for i, (conditions, result) in enumerate(cases.items()):
        u = unit(tmp_path, f"c{i}.service", service("ExecStart=/usr/bin/true", conditions))
        assert h.boot([u]).units[u.name].result == result, conditions


def test_paths_map_into_the_root_and_run_is_a_tmpfs(tmp_path: Path) -> None:
    h = host(tmp_path)
    u = unit(
        tmp_path,
        "p.service",
        service(
            "ExecStartPre=/usr/bin/mkdir -p /var/lib/x /run/x\n"
            "ExecStart=/usr/bin/touch /var/lib/x/a /run/x/b\n"
            "ExecStart=/usr/bin/touch --reference=/var/lib/x/a /run/x/c\n"
            'ExecStart=:/usr/bin/sh -c \'test "$(pwd)" = "$1" && test -z "$HOME"\' sh /\n'
        ),
    )
    run = h.boot([u]).units[u.name]
    assert run.result == "success", run.processes
    assert run.processes[1].mapped[1] == str(h.root / "var/lib/x/a")
    assert run.processes[2].mapped[1] == f"--reference={h.root / 'var/lib/x/a'}"
    assert h.path("/var/lib/x/a").exists() and h.path("/run/x/b").exists()
    h.boot([])
    assert h.path("/var/lib/x/a").exists() and not h.path("/run/x").exists()


def test_failures_restart_until_the_start_limit(tmp_path: Path) -> None:
    h = host(tmp_path)
    limited = unit(
        tmp_path,
        "r.service",
        service(
            "ExecStartPre=-/usr/bin/false\nExecStart=/usr/bin/false\nRestart=on-failure\nRestartSec=7",
            "StartLimitIntervalSec=1h\nStartLimitBurst=3",
        ),
    )
    run = h.boot([limited]).units[limited.name]
    assert run.result == "start-limit-hit" and run.starts == 3
    assert run.restart_delays == [7.0, 7.0, 7.0]
    assert [p.returncode for p in run.processes] == [1, 1] * 3  # the '-' pre command did not stop it
    # Restarts 7 s apart (virtual time): 8 starts fit in 60 s, 9 do not.
    for burst, starts in ((8, 8), (9, None)):
        windowed = unit(
            tmp_path,
            f"w{burst}.service",
            service(
                "ExecStart=/usr/bin/false\nRestart=on-failure\nRestartSec=7",
                f"StartLimitIntervalSec=60\nStartLimitBurst={burst}",
            ),
        )
        if starts is None:
            with pytest.raises(HarnessError, match="test guard"):
                h.boot([windowed])
        else:
            assert h.boot([windowed]).units[windowed.name].starts == starts
    once = unit(tmp_path, "n.service", service("ExecStart=/usr/bin/false"))
    run = h.boot([once]).units[once.name]
    assert run.result == "failed" and run.starts == 1


def test_a_reboot_stops_the_unit_and_the_boot(tmp_path: Path) -> None:
    h = host(tmp_path)
    first = unit(
        tmp_path,
        "a.service",
        service(
            "ExecStart=/usr/bin/systemctl reboot\nExecStartPost=/usr/bin/touch /done\nRestart=on-failure"
        ),
    )
    second = unit(tmp_path, "b.service", service("ExecStart=/usr/bin/true", "After=a.service"))
    record = h.boot([second, first])
    assert record.reboot_requested_by == "systemctl reboot"
    assert record.units["a.service"].result == "stopped" and record.units["a.service"].starts == 1
    assert record.units["b.service"].result == "not started"
    assert not h.path("/done").exists()


def test_ordering_cycles_and_unknown_units_fail(tmp_path: Path) -> None:
    a = unit(tmp_path, "a.service", service("ExecStart=/usr/bin/true", "After=b.service"))
    b = unit(tmp_path, "b.service", service("ExecStart=/usr/bin/true", "After=a.service"))
    with pytest.raises(HarnessError, match="cycle"):
        boot_order([a, b])
    c = unit(tmp_path, "c.service", service("ExecStart=/usr/bin/true", "After=nowhere.service"))
    with pytest.raises(HarnessError, match="neither"):
        boot_order([c])


def test_only_units_wanted_by_multi_user_boot(tmp_path: Path) -> None:
    lone = unit(tmp_path, "lone.service", "[Service]\nType=oneshot\nExecStart=/usr/bin/true\n")
    with pytest.raises(HarnessError, match="WantedBy"):
        host(tmp_path).boot([lone])
