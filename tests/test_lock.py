"""The locked set of versions (constraints.txt): every dependency pinned, the Makefile's venv (make demo, make test,
CI) installs through it, and the README names the versions its figures come from, as locked."""
import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def locked():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt: {line!r} is not name==version"
        pins[norm(m.group(1))] = m.group(2)
    return pins


def requirements():
    """The install_requires and the dev extra that apply on this Python (environment markers evaluated)."""
    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
    reqs = [Requirement(line.split("#")[0].strip()) for line in lines if line.split("#")[0].strip()]
    return {norm(r.name) for r in reqs if r.marker is None or r.marker.evaluate()}


def test_every_dependency_is_pinned():
    pins = locked()
    missing = sorted(requirements() - set(pins))
    assert not missing, f"not in constraints.txt: {missing} (run make lock)"
    assert "patentclip" not in pins  # the project itself is not locked
    for tool in ("pip", "setuptools"):
        assert tool in pins


def test_make_venv_demo_test_and_ci_install_the_lock():
    make = (REPO / "Makefile").read_text()
    venv_rule = make[make.index("$(STAMP): "):make.index("touch $(STAMP)")]
    assert "$(LOCK)" in venv_rule.splitlines()[0]  # a new lock rebuilds the venv
    installs = [line for line in venv_rule.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c $(LOCK)" in line for line in installs)
    assert re.search(r"^LOCK := constraints\.txt$", make, re.M)
    assert re.search(r"^demo: \$\(STAMP\)", make, re.M) and re.search(r"^test: \$\(STAMP\)", make, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    # and a way to run the suite on the newest releases, which is also the only way the lock is refreshed; it
    # prepares the machine as make test does (the system packages the tests use)
    assert re.search(r"^test-latest:", make, re.M) and re.search(r"^lock: test-latest", make, re.M)
    latest_rule = make[make.index("\ntest-latest:"):make.index("\nlock:")]
    test_rule = make[make.index("\ntest: "):]
    test_rule = test_rule[:test_rule.index("\n\n")]
    for script in re.findall(r"sh (tests/\S+\.sh)", test_rule):
        assert f"sh {script}" in latest_rule, f"make test-latest does not run {script} as make test does"


def test_readme_names_the_locked_versions_of_its_figures():
    pins = locked()
    readme = (REPO / "README.md").read_text()
    note = readme[readme.index("Versions of these figures"):][:1200]
    for name in ("torch", "torchvision", "open-clip-torch", "deepspeed", "numpy", "pillow", "webdataset"):
        assert f"{name} {pins[name]}" in note.replace("open_clip_torch", "open-clip-torch"), name
