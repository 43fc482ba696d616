"""Fuzzing the REST API with schemathesis: no 5xx, and no answer that contradicts the OpenAPI document.

Runs against the real app served by a real platform (SQLite registry, broker, uvicorn) over
loopback, seeded with a catalog and a few devices so that routes reach past "not found". The
run is bounded by `FUZZ_EXAMPLES` examples per operation (raise it with FLEETRIG_FUZZ_EXAMPLES
for a longer run, as `make fuzz` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from harness.client import Client
from harness.platform.process import PlatformConfig, PlatformThread

FUZZ_EXAMPLES = int(os.environ.get("FLEETRIG_FUZZ_EXAMPLES", "25"))

#: Checks left out, and why. `positive_data_acceptance` wants every schema-valid request to
#: succeed; but a 400 that refuses schema-valid input is the platform's business rules at work
#: (targets chosen one way, confirm=true to dispose, a PEM that parses, a part with a model)
#: and is declared as such. Every other check runs: no 5xx, status codes, content types,
#: headers and bodies as declared, invalid input rejected, authentication not ignored.
BUSINESS_RULES = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def fuzzed_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformThread]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "platform"
    thread = PlatformThread(PlatformConfig(data_dir=data_dir, http_port=0, mqtts_port=0, repo_port=0))
    platform = thread.start()
    with Client(platform.api_url, platform.token, actor="fuzz") as client:
        client.add_customer("ACME", "acme-0001")
        client.add_part("evk")
        client.add_model("evk-rev-a", "evk")
        client.provision([f"FZ-{i:03d}" for i in range(5)], customer="ACME", part="evk")
    try:
        yield thread
    finally:
        thread.stop()


def test_api_conforms_to_its_schema(fuzzed_platform: PlatformThread) -> None:
    """Every operation, with data that fits the schema and data that does not.

    Schemathesis's lazy pytest loader (`schemathesis.pytest.from_fixture`) fails on pytest 9.2
    (it sets `Function._nodeid`, which pytest no longer has), and the eager one needs the app at
    import time; so the operations are walked here, each with `operation.as_strategy()` under
    Hypothesis and `case.call_and_validate()`, and every failure is reported at the end.
    """
    platform = fuzzed_platform.platform
    schema = schemathesis.openapi.from_url(platform.api_url + "/openapi.json")
    # The token goes with every request; the security scheme is not fuzzed as a parameter (a
    # negative case that drops it would be sent with it anyway). `ignored_auth` still probes
    # every operation without a token and with a wrong one.
    headers = {"Authorization": f"Bearer {platform.token}"}
    schema.config.generation.update(with_security_parameters=False)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, excluded_checks=BUSINESS_RULES, timeout=30)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (a route without input): nothing to test
                assert mode == GenerationMode.NEGATIVE and not operation.body and not operation.query
            except (Exception, BaseExceptionGroup) as exc:  # one operation's failure must not hide the next's
                failures.append(f"{operation.label} ({mode}): {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
