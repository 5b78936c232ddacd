"""Suite-wide settings: one torch thread per test process.

Tests use tiny models, where a second thread only adds synchronisation; on a loaded machine
(CI runners, parallel jobs) spinning OpenMP threads slow tiny ops down by orders of magnitude.
"""


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # the catalog and registry suites need no torch
        return
    torch.set_num_threads(1)
