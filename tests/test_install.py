"""Installed, it runs anywhere: a plain (non-editable) install into a fresh
virtualenv serves the widget, the console and a ready /readyz from an empty
working directory, with every default file found inside the package."""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from supportchat.bot.knowledge import KnowledgeError, load_knowledge, packaged_knowledge_text
from tests.support import free_port, http_client
from tests.test_plugin import COPY_IGNORE, TWISTD, _Collect, base_env, text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagedDefaultsTests(TestCase):
    def test_conf_bot_toml_is_the_packaged_default(self):
        """conf/bot.toml (the documented copy) is byte for byte the knowledge file the
        installed package uses by default, and that default loads."""
        with open(os.path.join(ROOT, "conf", "bot.toml"), "rb") as f:
            self.assertEqual(f.read(), packaged_knowledge_text(),
                             "edit supportchat/bot/knowledge.toml, then copy it to conf/bot.toml")
        self.assertTrue(load_knowledge().faq)

    def test_relative_knowledge_path_is_the_working_directorys(self):
        """A relative [bot] knowledge path is read from the working directory (not from some
        checkout); when missing, the error gives the absolute path looked at and the default."""
        cwd = tempfile.mkdtemp(prefix="supportchat-knowledge-")
        self.addCleanup(shutil.rmtree, cwd, True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)
        e = self.assertRaises(KnowledgeError, load_knowledge, "conf/bot.toml")
        self.assertIn(os.path.join(cwd, "conf", "bot.toml"), str(e))
        self.assertIn("empty", str(e))
        os.mkdir("conf")
        with open(os.path.join("conf", "bot.toml"), "wb") as f:
            f.write(packaged_knowledge_text().replace(b"Order status", b"Where is my parcel"))
        self.assertEqual(load_knowledge("conf/bot.toml").quick_replies[0].label, "Where is my parcel")


class FreshVirtualenvTests(TestCase):
    timeout = 600

    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="supportchat-install-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    @inlineCallbacks
    def run_ok(self, executable: str, args: list[str], env: dict[str, str], path: str) -> Deferred:
        out, err, code = yield getProcessOutputAndValue(executable, args, env=env, path=path, reactor=reactor)
        self.assertEqual(code, 0, f"{executable} {' '.join(args)} failed:\n{text(out)}{text(err)}")
        return text(out)

    @inlineCallbacks
    def make_venv(self, tmp: str) -> Deferred:
        """A new virtualenv whose own site-packages is empty; the running
        interpreter's dependencies (and pip, setuptools, wheel) are reused
        through a .pth file, so no download is needed. Returns its python."""
        venv = os.path.join(tmp, "venv")
        yield self.run_ok(sys.executable, ["-m", "venv", "--without-pip", venv], base_env(tmp), tmp)
        python = os.path.join(venv, "bin", "python")
        purelib = (yield self.run_ok(python, ["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     base_env(tmp), tmp)).strip()
        self.assertTrue(purelib.startswith(venv + os.sep), purelib)
        self.assertEqual(os.listdir(purelib), [], "a fresh virtualenv has no packages of its own")
        here = sysconfig.get_paths()
        with open(os.path.join(purelib, "_supportchat_test_deps.pth"), "w", encoding="utf-8") as f:
            f.write("\n".join(dict.fromkeys([here["purelib"], here["platlib"]])) + "\n")
        return python, purelib

    @inlineCallbacks
    def test_plain_install_serves_from_an_empty_directory(self):
        """`pip install .` (not editable) into a fresh virtualenv, then `twistd -n supportchat run
        --data-dir DIR --listen tcp:PORT` from an empty directory: the installed copy is the one
        imported, /readyz says ready, / and /console are served, the installed supportchat-admin
        prints a token that server accepts, SIGTERM exits 0, and the directory stays empty."""
        tmp = self.tempdir()
        src = os.path.join(tmp, "src")
        shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
        python, purelib = yield self.make_venv(tmp)
        yield self.run_ok(python, ["-m", "pip", "--isolated", "--disable-pip-version-check", "install", "--quiet",
                                   "--no-deps", "--no-build-isolation", "--no-index", src], base_env(tmp), tmp)
        self.assertFalse([n for n in os.listdir(purelib) if n.endswith((".egg-link", ".pth")) and "supportchat" in n
                          and not n.startswith("_supportchat_test")], "the install must not be editable")
        shutil.rmtree(src)  # nothing may be read from the source tree any more

        cwd = os.path.join(tmp, "empty")
        os.mkdir(cwd)
        env = base_env(tmp, PYTHONUNBUFFERED="1")
        where = yield self.run_ok(python, ["-c", "import supportchat; print(supportchat.__file__)"], env, cwd)
        self.assertTrue(where.strip().startswith(purelib + os.sep), f"imported {where.strip()}, not the install")

        data = os.path.join(tmp, "data")
        port = free_port()
        done: Deferred = Deferred()
        proto = _Collect(done)
        transport = reactor.spawnProcess(
            proto, python, [python, "-c", TWISTD, "-n", "--pidfile=", "supportchat", "run", "--data-dir", data,
                            "--listen", f"tcp:{port}:interface=127.0.0.1"], env=env, path=cwd)

        def output() -> str:
            return text(b"".join(proto.out)) + text(b"".join(proto.err))

        def kill() -> Deferred | None:
            if done.called:
                return None
            transport.signalProcess("KILL")
            return done

        self.addCleanup(kill)
        base = f"http://127.0.0.1:{port}"
        ready = None
        for _ in range(600):  # up to a minute
            if done.called:
                self.fail("the server exited:\n" + output())
            try:
                r = yield http_client().get(base + "/readyz")
                body = yield r.text()
                if r.code == 200:
                    ready = json.loads(body)
                    break
            except Exception:
                pass
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertIsNotNone(ready, "never ready:\n" + output())
        self.assertIs(ready["ready"], True, ready)

        for path, marker in (("/", "widget"), ("/console", "console")):
            r = yield http_client().get(base + path)
            body = yield r.text()
            self.assertEqual(r.code, 200, path)
            self.assertIn("text/html", r.headers.getRawHeaders("content-type")[0])
            self.assertIn(marker, body.lower(), path)

        admin = os.path.join(os.path.dirname(python), "supportchat-admin")
        token = yield self.run_ok(admin, ["token", "--user-id", "ann", "--role", "agent", "--ttl", "300",
                                          "--data-dir", data], env, cwd)
        r = yield http_client().get(base + "/api/v1/inbox",
                                    headers={b"authorization": [b"Bearer " + token.strip().encode()]})
        body = yield r.text()
        self.assertEqual(r.code, 200, body)

        transport.signalProcess("TERM")
        _, _, code, signal = yield done
        self.assertEqual((code, signal), (0, None), output())
        self.assertEqual(os.listdir(cwd), [], "the server wrote into its working directory")
