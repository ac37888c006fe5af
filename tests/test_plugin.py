"""Tests for the twistd plugin: found after a plain install, and the
configuration is validated before anything starts."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from supportchat.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_CACHE = os.path.join(ROOT, "twisted", "plugins", "dropin.cache")
TWISTD = "from twisted.scripts.twistd import run; run()"
# Left out of the copy the install is built from: VCS data, environments,
# build output and caches (the install must not depend on any of them).
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".mypy_cache", "_trial_temp*", "build", "dist", "*.egg-info",
    "__pycache__", "*.pyc", "dropin.cache", "data", "node_modules", "tests", "bench",
)


def base_env(home: str, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": home,
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
    }
    env.update(extra)
    return env


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def listed_commands(help_text: str) -> list[str]:
    """The command names twistd --help lists under 'Commands:'."""
    _, _, rest = help_text.partition("Commands:")
    return re.findall(r"^ {2,}(\S+) {2,}", rest, re.M)


class _Collect(ProcessProtocol):
    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        self.done.callback((b"".join(self.out), b"".join(self.err), reason.value.exitCode, reason.value.signal))


def run_killable(args: list[str], env: dict[str, str], path: str, timeout: float) -> Deferred:
    """Run ``sys.executable args``; kill it after ``timeout`` seconds.

    Used for ``twistd ... run``: if validation were broken the server would
    start and never exit, which getProcessOutputAndValue cannot stop.
    Fires with (stdout, stderr, exit code, signal)."""
    done: Deferred = Deferred()
    transport = reactor.spawnProcess(_Collect(done), sys.executable, [sys.executable] + args, env=env, path=path)
    killer = reactor.callLater(timeout, transport.signalProcess, "KILL")

    def stop(result):
        if killer.active():
            killer.cancel()
        return result

    return done.addBoth(stop)


class _TempCase(TestCase):
    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="supportchat-plugin-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def keep_repo_cache_state(self) -> None:
        """Remove a dropin.cache twistd writes into the checkout, if there was none before."""
        if not os.path.exists(REPO_CACHE):
            self.addCleanup(lambda: os.path.exists(REPO_CACHE) and os.remove(REPO_CACHE))


class LayoutTests(TestCase):
    def test_no_init_in_plugin_dirs(self):
        """The checkout's twisted/ and twisted/plugins/ have no __init__.py (which would shadow Twisted)."""
        self.assertTrue(os.path.isfile(os.path.join(ROOT, "twisted", "plugins", "supportchat_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))


class InstalledPluginTests(_TempCase):
    timeout = 600

    @inlineCallbacks
    def install(self, tmp: str):
        """Install a copy of the project non-editably; return the directory to put on PYTHONPATH."""
        src = os.path.join(tmp, "src")
        shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
        target = os.path.join(tmp, "target")
        env = base_env(tmp)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--no-deps",
             "--no-build-isolation", "--no-index", "--target", target, src],
            env=env, path=tmp, reactor=reactor,
        )
        if code == 0:
            return target
        log = text(out) + text(err)
        if "bdist_wheel" not in log:
            self.fail(f"pip install failed ({code}):\n{log}")
        # This venv lacks the 'wheel' package that setuptools < 70.1 needs for
        # --no-build-isolation builds. Fall back to the plain (non-egg,
        # non-editable) setuptools install of the same package list.
        shutil.rmtree(target, ignore_errors=True)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", "import setuptools; setuptools.setup()", "-q", "install", "--root", target,
             "--install-lib", "/lib", "--install-scripts", "/bin", "--install-data", "/data",
             "--install-headers", "/headers"],
            env=env, path=src, reactor=reactor,
        )
        if code != 0:
            self.fail(f"setuptools install failed ({code}):\n{text(out)}{text(err)}")
        return os.path.join(target, "lib")

    @inlineCallbacks
    def test_twistd_finds_plugin_after_plain_install(self):
        """After a plain (non-editable) install, `twistd --help` lists the supportchat command."""
        had_repo_cache = os.path.exists(REPO_CACHE)
        tmp = self.tempdir()
        lib = yield self.install(tmp)

        plugins = os.path.join(lib, "twisted", "plugins")
        self.assertTrue(os.path.isfile(os.path.join(plugins, "supportchat_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(plugins, "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(lib, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(plugins, "dropin.cache")))
        migrations = os.path.join(lib, "supportchat", "storage", "migrations")
        self.assertTrue([n for n in os.listdir(migrations) if n.endswith(".sql")])
        self.assertTrue(os.path.isfile(os.path.join(lib, "supportchat", "py.typed")))

        cwd = os.path.join(tmp, "cwd")
        os.mkdir(cwd)
        env = base_env(tmp, PYTHONPATH=lib)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", "import supportchat; print(supportchat.__file__)"],
            env=env, path=cwd, reactor=reactor,
        )
        self.assertEqual(code, 0, text(err))
        self.assertTrue(text(out).strip().startswith(lib + os.sep), "the installed copy must be the one imported")

        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", TWISTD, "--help"], env=env, path=cwd, reactor=reactor,
        )
        self.assertEqual(code, 0, text(err))
        self.assertIn("supportchat", listed_commands(text(out)), text(out) + text(err))
        self.assertEqual(os.listdir(cwd), [])
        self.assertEqual(os.path.exists(REPO_CACHE), had_repo_cache)


class ConfigErrorExitTests(_TempCase):
    timeout = 120

    def run_twistd(self, tmp: str, extra_args: list[str], **extra_env: str) -> Deferred:
        self.keep_repo_cache_state()
        cwd = os.path.join(tmp, "cwd")
        os.mkdir(cwd)
        args = ["-c", TWISTD, "-n", "--pidfile=", "supportchat", "run",
                "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", os.path.join(tmp, "data")] + extra_args
        return run_killable(args, base_env(tmp, PYTHONPATH=ROOT, **extra_env), cwd, timeout=60)

    @inlineCallbacks
    def test_bad_config_file(self):
        """`twistd -n supportchat run --config <bad>` exits non-zero naming the file, key and reason,
        before creating anything."""
        tmp = self.tempdir()
        conf = os.path.join(tmp, "bad.toml")
        with open(conf, "w") as f:
            f.write("[websocket]\nmax_body_chars = 0\n")
        expected = self.assertRaises(ConfigError, load_config, conf, {})
        out, err, code, signal = yield self.run_twistd(tmp, ["--config", conf])
        output = text(out) + text(err)
        self.assertIsNone(signal, "twistd kept running with an invalid configuration:\n" + output)
        self.assertNotEqual(code, 0)
        self.assertIn(conf, output)
        self.assertIn("websocket.max_body_chars", output)
        self.assertIn(expected.reason, output)
        self.assertFalse(os.path.exists(os.path.join(tmp, "data")))

    @inlineCallbacks
    def test_missing_config_file(self):
        """A --config path that does not exist exits non-zero naming the file."""
        tmp = self.tempdir()
        conf = os.path.join(tmp, "absent.toml")
        out, err, code, signal = yield self.run_twistd(tmp, ["--config", conf])
        output = text(out) + text(err)
        self.assertIsNone(signal, output)
        self.assertNotEqual(code, 0)
        self.assertIn(conf, output)

    @inlineCallbacks
    def test_unknown_env_key(self):
        """SUPPORTCHAT_WEBSOCKET_NOPE=1 makes twistd exit non-zero naming the variable and key."""
        tmp = self.tempdir()
        out, err, code, signal = yield self.run_twistd(tmp, [], SUPPORTCHAT_WEBSOCKET_NOPE="1")
        output = text(out) + text(err)
        self.assertIsNone(signal, "twistd kept running with an invalid configuration:\n" + output)
        self.assertNotEqual(code, 0)
        self.assertIn("SUPPORTCHAT_WEBSOCKET_NOPE", output)
        self.assertIn("websocket.nope", output)
        self.assertFalse(os.path.exists(os.path.join(tmp, "data")))
