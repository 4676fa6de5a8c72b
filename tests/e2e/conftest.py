import pytest

from harness import start_gateway
from ratelimit_support import Stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see whether the test failed, to print the gateway's logs.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, request):
    """The example gateway with all three filters, shared by a test module."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def logs_on_failure(request):
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for name in request.fixturenames:
            if name.startswith("gateway") or name.endswith("gateway"):
                gw = request.getfixturevalue(name)
                if hasattr(gw, "logs"):
                    print(f"\n===== logs of fixture {name} =====\n{gw.logs()}")


@pytest.fixture
def fresh_mocks(gateway):
    gateway.reset_mocks()
    return gateway


@pytest.fixture
def stack(tmp_path, request):
    """A rate-limit service stack (service, Envoy, mock) from ratelimit_support."""
    s = Stack(run_dir=tmp_path)
    yield s
    s.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(f"\n===== logs =====\n{s.logs()}")
