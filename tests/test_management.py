"""Device management end to end: jobs through the platform, the broker (TLS) and simulated devices."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from agent.packages import sign
from tests.conftest import FAMILIES, boot, provision, wait_for

FAMILY_SERIAL = {"imx": "MG-IMX-1", "photon": "MG-PNX-1", "x86": "MG-X86-1"}


def tar_gz(members: dict[str, bytes], *, mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


COMPOSE = b"services:\n  web:\n    image: nginx:1.27\n  cache:\n    image: redis:7\n"


class Bench:
    """A platform, its client, a fleet, and helpers to run jobs from async tests."""

    def __init__(self, platform, fleet, tmp_path: Path) -> None:
        self.platform = platform
        self.client = platform.client
        self.fleet = fleet
        self.tmp = tmp_path

    async def job(self, method: str, params: dict | None = None, serials: list[str] | None = None, **kw) -> dict:
        job = await asyncio.to_thread(self.client.create_job, method, params or {}, serials=serials, **kw)
        return await asyncio.to_thread(self.client.wait_job, job["id"], 120)

    async def one(self, serial: str, method: str, params: dict | None = None, **kw) -> dict:
        job = await self.job(method, params, [serial], **kw)
        assert job["done"], job
        (result,) = job["results"]
        return result

    async def upload(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return (await asyncio.to_thread(self.client.add_package, path))["url"]

    async def device(self, serial: str) -> dict:
        return await asyncio.to_thread(self.client.device, serial)

    async def works(self, serial: str) -> None:
        """The device still answers commands."""
        result = await self.one(serial, "triggerquery", {"option": "version"})
        assert result["status"] == 200, result


@pytest.fixture
async def bench(fleetrig_platform, fleetrig_catalog, tmp_path):
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, list(FAMILY_SERIAL.values()))
    fleet = await boot(envs, tmp_path / "devices")
    assert [fleet.devices[s].family for s in FAMILY_SERIAL.values()] == list(FAMILIES)
    yield Bench(fleetrig_platform, fleet, tmp_path)
    await fleet.stop()


@pytest.mark.parametrize("family", FAMILIES)
async def test_config_query_and_aota_per_family(bench, family):
    serial = FAMILY_SERIAL[family]
    result = await bench.one(serial, "triggerconfig", {"cmd": "set", "path": "maxCacheSize:149"})
    assert result["status"] == 200
    result = await bench.one(serial, "triggerconfig", {"cmd": "get", "path": "maxCacheSize;minPowerPercent"})
    assert result["data"] == {"maxCacheSize": "149", "minPowerPercent": "20"}
    result = await bench.one(serial, "triggerquery", {"option": "hw"})
    assert result["data"]["hw"]["product"] == bench.fleet.devices[serial].hardware.family.product

    url = await bench.upload(f"stack-{family}.tar.gz", tar_gz({f"stack-{family}/docker-compose.yml": COMPOSE}))
    assert url.startswith(bench.platform.platform.repo_url)
    up = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "up", "containerTag": f"stack-{family}",
                                                 "fetch": url})
    assert up["status"] == 200, up
    runtime = bench.fleet.devices[serial].hardware.containers
    assert {c["image"] for c in runtime.containers()} == {"nginx:1.27", "redis:7"}
    listed = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "list", "containerTag": "x"})
    assert listed["data"]["stacks"][0]["running"] is True
    down = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "down", "containerTag": f"stack-{family}"})
    assert down["status"] == 200 and runtime.containers() == []
    events = await asyncio.to_thread(bench.client.events, serial)
    kinds = [e["kind"] for e in events]
    assert "ota.started" in kinds and "ota.downloading" in kinds and "ota.succeeded" in kinds


@pytest.mark.parametrize("family", FAMILIES)
async def test_fota_reboots_into_the_new_version_per_family(bench, family):
    serial = FAMILY_SERIAL[family]
    device = bench.fleet.devices[serial]
    facts = (await bench.device(serial))["facts"]
    newer = (dt.date.fromisoformat(facts["bios_release_date"]) + dt.timedelta(days=30)).isoformat()
    url = await bench.upload(f"fw-{family}.tar", tar_gz({"fw.bin": b"\x7fFIRMWARE" * 1000}, mode="w"))
    form = {"fetch": url, "biosversion": f"{family}-9.9.9", "vendor": facts["bios_vendor"],
            "manufacturer": facts["manufacturer"], "product": facts["product"], "releasedate": newer}
    result = await bench.one(serial, "triggerfota", form)
    assert result["status"] == 200, result
    await wait_for(lambda: device.reboots == 1 and device.agent.connects == 2 and device.live)
    await wait_for(lambda: bench.client.device(serial)["firmware_version"] == f"{family}-9.9.9")
    assert (await bench.device(serial))["connectivity"] == "online"
    fleet_row = next(d for d in await asyncio.to_thread(bench.client.devices) if d["serial"] == serial)
    assert fleet_row["firmware_version"] == f"{family}-9.9.9"

    # The same release again is not newer; another product never matches.
    older = await bench.one(serial, "triggerfota", {**form, "biosversion": "x"})
    assert older["status"] == 400 and "is not newer" in older["message"]
    other = await bench.one(serial, "triggerfota", {**form, "product": "someone-else",
                                                    "releasedate": "2099-01-01"})
    assert other["status"] == 400 and "product 'someone-else' does not match" in other["message"]
    assert device.hardware.firmware == f"{family}-9.9.9" and device.hardware.staged is None


@pytest.mark.parametrize("family", FAMILIES)
async def test_sota_modes_and_mender_per_family(bench, family):
    serial = FAMILY_SERIAL[family]
    pm = bench.fleet.devices[serial].hardware.packages
    pending = dict(pm.available)
    assert pending
    result = await bench.one(serial, "triggersota", {"cmd": "update", "mode": "download-only"})
    assert result["status"] == 200 and pm.installed_ != {**pm.installed_, **pending} and pm.cache == pending
    result = await bench.one(serial, "triggersota", {"cmd": "update", "mode": "no-download", "log_to_file": "N"})
    assert result["status"] == 200 and result["data"]["log"]
    assert all(pm.installed_[name] == version for name, version in pending.items())
    url = await bench.upload(f"rootfs-{family}-2.mender", b"MENDER" * 500)
    result = await bench.one(serial, "triggersota", {"cmd": "update", "fetch": url})
    assert result["status"] == 200, result
    device = bench.fleet.devices[serial]
    await wait_for(lambda: device.reboots == 1 and device.agent.connects == 2 and device.live)
    assert pm.rootfs_version == f"rootfs-{family}-2"


async def test_refusals_and_the_device_still_works(bench):
    serial = FAMILY_SERIAL["x86"]
    device = bench.fleet.devices[serial]
    untrusted = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "up", "containerTag": "web",
                                                        "fetch": "https://evil.example.com/web.tar.gz"})
    assert untrusted["status"] == 400 and "Source verification failed" in untrusted["message"]
    missing = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "up", "containerTag": "web",
                                                      "fetch": bench.platform.platform.repo_url + "nope.tar.gz"})
    assert missing["status"] == 404, missing

    url = await bench.upload("img.tar.gz", tar_gz({"img/layer.tar": b"layer" * 100}))
    form = {"app": "docker", "cmd": "import", "containerTag": "img", "version": "1.0", "fetch": url}
    assert (await bench.one(serial, "triggeraota", form))["status"] == 200
    again = await bench.one(serial, "triggeraota", form)
    assert again["status"] == 401 and "IMAGE ALREADY PRESENT" in again["message"]

    evil_package = tar_gz({"evil/../../escape.txt": b"x", "evil/docker-compose.yml": COMPOSE})
    evil = await bench.upload("evil.tar.gz", evil_package)
    traversal = await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "up", "containerTag": "evil",
                                                        "fetch": evil})
    assert traversal["status"] == 400 and "escapes the folder" in traversal["message"]
    assert not any(bench.tmp.rglob("escape.txt"))

    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            "<manifest><type>cmd</type><cmd>&lol2;</cmd></manifest>")
    xxe = ('<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           "<manifest><type>cmd</type><cmd>&x;</cmd></manifest>")
    oversize = "<manifest><type>cmd</type><cmd>query</cmd>" + "<!-- pad -->" * 10000 + "</manifest>"
    for xml in (bomb, xxe, oversize, "<manifest><type>ota</type>"):
        result = await bench.one(serial, "triggerota", {"manifest": xml})
        assert result["status"] == 300, result
    assert device.powered and not device.error
    await bench.works(serial)


async def test_diagnostics_and_busy(bench):
    serial = FAMILY_SERIAL["photon"]
    hardware = bench.fleet.devices[serial].hardware
    hardware.battery_percent = 5
    low = await bench.one(serial, "triggersota", {"cmd": "update", "mode": "full"})
    assert low["status"] == 301 and "battery at 5%, below 20%" in low["message"]
    hardware.battery_percent = 90
    hardware.install_seconds = 2.0
    first = await asyncio.to_thread(bench.client.create_job, "triggersota", {"cmd": "update", "mode": "full"},
                                    serials=[serial])
    await asyncio.sleep(0.5)
    busy = await bench.one(serial, "triggersota", {"cmd": "update", "mode": "full"})
    assert busy["status"] in (302, 303) and "OTA IN PROGRESS" in busy["message"]
    done = await asyncio.to_thread(bench.client.wait_job, first["id"], 30)
    assert done["results"][0]["status"] == 200
    hardware.install_seconds = 0
    await bench.works(serial)


async def test_a_silent_device_fails_its_job_with_a_reason(bench):
    serial = FAMILY_SERIAL["imx"]
    hardware = bench.fleet.devices[serial].hardware
    hardware.install_seconds = 30
    job = await asyncio.to_thread(bench.client.create_job, "triggersota", {"cmd": "update", "mode": "full"},
                                  serials=[serial], timeout_s=2)
    await asyncio.sleep(0.3)
    await bench.fleet.power_off(serial)  # it goes silent mid-command
    done = await asyncio.to_thread(bench.client.wait_job, job["id"], 30)
    (result,) = done["results"]
    assert done["done"] and result["status"] == 408 and "timed out" in result["message"]
    offline = await bench.one(serial, "triggerquery", {"option": "version"})
    assert offline["status"] == 503 and "offline" in offline["message"]


async def test_reboot_shutdown_and_decommission(bench):
    imx, pnx, x86 = FAMILY_SERIAL.values()
    device = bench.fleet.devices[imx]
    assert (await bench.one(imx, "reboot_device"))["status"] == 200
    await wait_for(lambda: device.reboots == 1 and device.live and device.agent.connects == 2)
    await wait_for(lambda: bench.client.device(imx)["connectivity"] == "online")

    assert (await bench.one(pnx, "shutdown_device"))["status"] == 200
    await wait_for(lambda: not bench.fleet.devices[pnx].powered)
    await wait_for(lambda: bench.client.device(pnx)["connectivity"] == "offline")

    result = await bench.one(x86, "decommission_device")
    assert result["status"] == 200
    target = bench.fleet.devices[x86]
    await wait_for(lambda: not target.powered)
    assert (bench.tmp / "devices" / x86 / "identity.json").exists() is False
    shown = await bench.device(x86)
    assert shown["state"] == "decommissioned" and all(c["revoked_at"] for c in shown["credentials"])
    assert bench.platform.ctx.identities.get(x86) is None
    bench.fleet.power_on(x86)
    await wait_for(lambda: not target.powered)
    assert "init key" in target.error or "decommissioned" in target.error
    with pytest.raises(Exception, match="decommissioned"):
        await asyncio.to_thread(bench.client.create_job, "triggerquery", {"option": "all"}, serials=[x86])


def _signing_material(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ota signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_signed_packages(fleetrig_platform, fleetrig_catalog, tmp_path):
    key, cert = _signing_material(tmp_path)
    envs = await asyncio.to_thread(provision, fleetrig_platform, fleetrig_catalog, ["SIG-001"], signature_cert=cert)
    assert envs["SIG-001"].signature_cert_pem == cert
    fleet = await boot(envs, tmp_path / "devices")
    bench = Bench(fleetrig_platform, fleet, tmp_path)
    package = tar_gz({"signed/docker-compose.yml": COMPOSE})
    url = await bench.upload("signed.tar.gz", package)
    form = {"app": "compose", "cmd": "up", "containerTag": "signed", "fetch": url}
    missing = await bench.one("SIG-001", "triggeraota", form)
    assert missing["status"] == 400 and "signature missing" in missing["message"]
    bad = await bench.one("SIG-001", "triggeraota", {**form, "signature": sign(b"other bytes", key)})
    assert bad["status"] == 400 and "signature check failed" in bad["message"]
    assert fleet.devices["SIG-001"].hardware.containers.containers() == []
    good = await bench.one("SIG-001", "triggeraota", {**form, "signature": sign(package, key)})
    assert good["status"] == 200, good
    await fleet.stop()


async def test_cases_json_through_the_broker(bench):
    root = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "inbm"
    if not root.is_dir():
        pytest.skip(f"conformance data not found at {root} (it lives beside the project, in ../shared)")
    import json

    cases = json.loads((root / "cases.json").read_text())["cases"]
    serial = FAMILY_SERIAL["x86"]
    device = bench.fleet.devices[serial]
    for case in cases:
        name = case["manifest"]
        result = await bench.one(serial, "triggerota", {"manifest": (root / "manifests" / name).read_text()})
        assert result["status"] == case["expect_status"], (name, result)
        if name.endswith("CONFIG_SET_SUCCESS.xml"):
            got = await bench.one(serial, "triggerconfig", {"cmd": "get", "path": "maxCacheSize"})
            assert got["data"] == {"maxCacheSize": "149"}
        elif name.endswith("CONFIG_APPEND.xml"):
            assert "htpps://dummyURL.com" in device.agent.manager.config.list("trustedRepositories")
        elif name.endswith("CONFIG_REMOVE.xml"):
            assert "htpps://dummyURL.com" not in device.agent.manager.config.list("trustedRepositories")
        elif name.endswith("FOTA_BAD_NONMATCHING.xml"):
            assert device.hardware.staged is None and "product 'invalidproduct'" in result["message"]
        elif name.endswith("REBOOT_GOOD.xml"):
            await wait_for(lambda: device.reboots == 1 and device.agent.connects == 2 and device.live)
            await wait_for(lambda: bench.client.device(serial)["connectivity"] == "online")
        elif name.endswith("DECOMMISSION.xml"):
            await wait_for(lambda: not device.powered)
            assert (await bench.device(serial))["state"] == "decommissioned"
            bench.fleet.power_on(serial)
            await wait_for(lambda: not device.powered)
            assert device.error


async def test_config_load_pota_docker_load_and_stats(bench):
    serial = FAMILY_SERIAL["imx"]
    device = bench.fleet.devices[serial]
    conf = (b"<configurations><telemetry><maxCacheSize>42</maxCacheSize></telemetry>"
            b"<dispatcher><trustedRepositories>https://mirror.example.com/</trustedRepositories></dispatcher>"
            b"</configurations>")
    url = await bench.upload("intel_manageability.conf", conf)
    loaded = await bench.one(serial, "triggerconfig", {"cmd": "load", "fetch": url})
    assert loaded["status"] == 200, loaded
    assert device.agent.manager.config.int("maxCacheSize") == 42
    assert device.agent.manager.config.list("trustedRepositories") == ["https://mirror.example.com/"]
    bomb = await bench.upload("bomb.conf", b'<!DOCTYPE c [<!ENTITY a "aaaa">]><configurations>&a;</configurations>')
    refused = await bench.one(serial, "triggerconfig", {"cmd": "load", "fetch": bomb})
    assert refused["status"] == 400 and "DTDs and entities" in refused["message"]
    assert device.agent.manager.config.int("maxCacheSize") == 42

    image = await bench.upload("sensor.tar.gz", tar_gz({"sensor/layer.tar": b"layer" * 50}))
    result = await bench.one(serial, "triggeraota", {"app": "docker", "cmd": "load", "containerTag": "sensor",
                                                     "fetch": image})
    assert result["status"] == 200 and "sensor:latest" in device.hardware.containers.images_
    up = await bench.upload("edge.tar.gz", tar_gz({"edge/docker-compose.yml": COMPOSE}))
    assert (await bench.one(serial, "triggeraota", {"app": "compose", "cmd": "up", "containerTag": "edge",
                                                    "fetch": up}))["status"] == 200
    stats = await bench.one(serial, "triggeraota", {"app": "docker", "cmd": "stats", "containerTag": "x"})
    assert {c["image"] for c in stats["data"]["containers"]} == {"nginx:1.27", "redis:7"}

    facts = (await bench.device(serial))["facts"]
    newer = (dt.date.fromisoformat(facts["bios_release_date"]) + dt.timedelta(days=1)).isoformat()
    firmware = await bench.upload("fw.bin", b"\x7fFW" * 300)
    rootfs = await bench.upload("rootfs-imx-7.mender", b"MENDER" * 100)
    manifest = f"""<?xml version="1.0" encoding="UTF-8"?>
<manifest><type>ota</type><ota><header><type>pota</type><repo>remote</repo></header><type><pota>
<fota name="sample"><fetch>{firmware}</fetch><biosversion>imx-pota-1</biosversion>
<manufacturer>{facts["manufacturer"]}</manufacturer><product>{facts["product"]}</product>
<vendor>{facts["bios_vendor"]}</vendor><releasedate>{newer}</releasedate></fota>
<sota><cmd logtofile="y">update</cmd><mode>full</mode><fetch>{rootfs}</fetch></sota>
</pota></type></ota></manifest>"""
    result = await bench.one(serial, "triggerota", {"manifest": manifest})
    assert result["status"] == 200, result
    await wait_for(lambda: device.reboots == 1 and device.agent.connects == 2 and device.live)
    assert device.hardware.firmware == "imx-pota-1" and device.hardware.packages.rootfs_version == "rootfs-imx-7"


async def test_repository_basic_auth(fleetrig_catalog, tmp_path):
    from harness.client import Client
    from harness.platform.process import PlatformConfig, PlatformThread

    thread = PlatformThread(PlatformConfig(data_dir=tmp_path / "p", http_port=0, mqtts_port=0, repo_port=0,
                                           repo_user="ota", repo_password="s3cret"))
    platform = await asyncio.to_thread(thread.start)
    client = Client(platform.api_url, platform.token)
    try:
        await asyncio.to_thread(client.add_customer, "ACME", "acme-auth")
        await asyncio.to_thread(client.add_part, "evk")
        await asyncio.to_thread(client.add_model, "evk-a", "evk")
        report = await asyncio.to_thread(client.provision, ["AUTH-001"], customer="ACME", part="evk")
        from agent.env import parse_agent_env

        fleet = await boot({"AUTH-001": parse_agent_env(report["results"][0]["agent_env"])}, tmp_path / "d")
        package = tmp_path / "app.tar.gz"
        package.write_bytes(tar_gz({"app/docker-compose.yml": COMPOSE}))
        url = (await asyncio.to_thread(client.add_package, package))["url"]
        form = {"app": "compose", "cmd": "up", "containerTag": "app", "fetch": url}

        async def one(params: dict) -> dict:
            job = await asyncio.to_thread(client.create_job, "triggeraota", params, serials=["AUTH-001"])
            return (await asyncio.to_thread(client.wait_job, job["id"], 60))["results"][0]

        denied = await one(form)
        assert denied["status"] == 400 and "refused the download (401)" in denied["message"]
        wrong = await one({**form, "username": "ota", "password": "guess"})
        assert wrong["status"] == 400
        good = await one({**form, "username": "ota", "password": "s3cret"})
        assert good["status"] == 200, good
        await fleet.stop()
    finally:
        client.close()
        await asyncio.to_thread(thread.stop)
