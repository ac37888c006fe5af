"""Email to visitors (issue 17): composing replies and transcripts (threading, languages, plain text
always, no internal notes), the durable outbox and its retries on a Clock, Twisted's SMTP client against a
real Twisted SMTP server started here, and the server's REST endpoints end to end."""

from __future__ import annotations

import email
import email.policy
import json
import random
import re
from email.message import EmailMessage
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.mail import smtp
from twisted.trial import unittest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from zope.interface import implementer

from supportchat.background import BackgroundTasks
from supportchat.config import ConfigError, load_config
from supportchat.email.compose import (
    as_bytes, check_unsubscribe, compose_reply, compose_transcript, pick_lang, unsubscribe_token,
)
from supportchat.email.dispatcher import EmailDispatcher
from supportchat.email.sender import MemoryEmailSender, SmtpEmailSender
from supportchat.email.store import SqlEmailStore
from supportchat.http.email_api import valid_address
from supportchat.metrics import Metrics
from supportchat.storage.models import EVENT, TEXT, AppendRequest, Message, customer_key
from tests.support import Api, start_server, token

SECRET = "test-secret"


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(msg: EmailMessage) -> str | None:
    part = msg.get_body(("html",))
    return None if part is None else str(part.get_content())  # type: ignore[attr-defined]


# -- a real SMTP server (twisted.mail) ------------------------------------------------------------------


class Mailbox:
    """What the test SMTP server received: (envelope recipient, raw message)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def add(self, to: str, raw: bytes) -> None:
        self.received.append((to, raw))
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(None)

    def wait_for(self, n: int, timeout: float = 10.0) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        if len(self.received) >= n:
            d.callback(None)
        else:
            self._waiters.append((n, d))
        return d.addTimeout(timeout, reactor)

    def messages(self) -> list[EmailMessage]:
        return [parse(raw) for _, raw in self.received]


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, box: Mailbox, to: str) -> None:
        self.box, self.to, self.lines = box, to, []  # type: tuple[Mailbox, str, list[bytes]]

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> "Deferred[None]":
        self.box.add(self.to, b"\r\n".join(self.lines) + b"\r\n")
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: from test"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        to = str(user.dest)
        return lambda: _Message(self.box, to)


class _SmtpFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP

    def __init__(self, box: Mailbox) -> None:
        super().__init__()
        self.delivery = _Delivery(box)

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        return p


def smtp_server(testcase: unittest.TestCase, box: Mailbox, port: int = 0) -> int:
    """Start Twisted's ESMTP server on 127.0.0.1 (stopped at cleanup); returns its port."""
    listening = reactor.listenTCP(port, _SmtpFactory(box), interface="127.0.0.1")  # type: ignore[attr-defined]
    testcase.addCleanup(listening.stopListening)
    return int(listening.getHost().port)


@implementer(IRealm)
class _Realm:
    def __init__(self, box: Mailbox, logins: list[bytes]) -> None:
        self.box, self.logins = box, logins

    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> Any:
        self.logins.append(avatar_id)
        return smtp.IMessageDelivery, _Delivery(self.box), lambda: None


class _SecureSmtpFactory(smtp.SMTPFactory):
    """ESMTP offering STARTTLS (``context``) and AUTH LOGIN/PLAIN for user/pw, accepting mail only after AUTH."""

    protocol = smtp.ESMTP

    def __init__(self, box: Mailbox, context: Any, logins: list[bytes]) -> None:
        super().__init__(Portal(_Realm(box, logins), [InMemoryUsernamePasswordDatabaseDontUse(user=b"pw")]))
        self.context = context
        self.tls: list[bool] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        p.ctx = self.context
        from twisted.mail.imap4 import PLAINCredentials

        p.challengers = {b"LOGIN": smtp.LOGINCredentials, b"PLAIN": PLAINCredentials}
        original = p.validateTo

        def validate_to(user: Any) -> Any:
            self.tls.append(bool(getattr(p, "startedTLS", False)))
            return original(user)

        p.validateTo = validate_to
        return p


# -- composing ------------------------------------------------------------------------------------------


def agent_msg(seq: int, body: str, conv: str = "c1", data: dict[str, Any] | None = None) -> Message:
    return Message(conv, f"{conv}-{seq}", seq, "agent1", "agent", None, TEXT, body, 1000.0 + seq,
                   data if data is not None else {"sender_name": "Ann"})


class ComposeTests(unittest.TestCase):
    def test_reply_is_threaded_with_unsubscribe(self) -> None:
        """A reply has its own Message-ID, In-Reply-To/References to the thread, a plain-text part with the
        body and the unsubscribe link, and List-Unsubscribe."""
        url = "https://chat.example.com/api/v1/unsubscribe?conversation=c1&token=abc"
        msg = compose_reply(agent_msg(3, "We fixed it"), lang="en", from_addr="Support <help@example.com>",
                            to_addr="v@example.org", domain="example.com", attachment_url=lambda a: f"https://x/{a}",
                            unsubscribe=url, thread_root="<c1-2@example.com>", thread_last="<c1-2@example.com>",
                            now=2000.0)
        parsed = parse(as_bytes(msg))
        self.assertEqual(parsed["Message-ID"], "<c1-3@example.com>")
        self.assertEqual(parsed["In-Reply-To"], "<c1-2@example.com>")
        self.assertEqual(parsed["References"], "<c1-2@example.com>")
        self.assertEqual(parsed["List-Unsubscribe"], f"<{url}>")
        self.assertIn("We fixed it", text_of(parsed))
        self.assertIn("Ann", text_of(parsed))
        self.assertIn(url, text_of(parsed))

    def test_chinese_template_and_attachment_links(self) -> None:
        """zh-CN picks the Simplified Chinese template; an attachment is a link, never the file."""
        self.assertEqual(pick_lang("zh-CN"), "zh")
        self.assertEqual(pick_lang("fr"), "en")
        m = agent_msg(2, "请看附件", data={"attachments": [{"id": "att_1", "name": "发票.pdf"}]})
        msg = compose_reply(m, lang="zh-CN", from_addr="help@example.com", to_addr="v@example.org",
                            domain="example.com", attachment_url=lambda a: f"https://chat.example.com/a/{a}",
                            unsubscribe="https://u", thread_root=None, thread_last=None, now=2000.0)
        parsed = parse(msg.as_bytes())
        self.assertEqual(parsed["Subject"], "您的客服会话有新回复")
        self.assertIsNone(parsed["In-Reply-To"])
        body = text_of(parsed)
        self.assertIn("请看附件", body)
        self.assertIn("发票.pdf <https://chat.example.com/a/att_1>", body)
        self.assertEqual([p.get_content_type() for p in parsed.walk()], ["text/plain"])

    def test_transcript_has_text_and_html_and_no_lifecycle_entries(self) -> None:
        """The transcript has a plain-text and an HTML part with every chat message (escaped in HTML) and
        no lifecycle entry."""
        entries = [
            Message("c1", "c1-1", 1, "workflow", "system", None, EVENT, "created", 1001.0, {"name": "created"}),
            Message("c1", "c1-2", 2, "c:alice", "customer", None, TEXT, "Help <please>", 1002.0, None),
            agent_msg(3, "Sure"),
        ]
        msg = compose_transcript(entries, lang="en", from_addr="help@example.com", to_addr="v@example.org",
                                 domain="example.com", attachment_url=str, unsubscribe="https://u",
                                 thread_root="<c1-3@example.com>", thread_last="<c1-3@example.com>",
                                 conversation_id="c1", now=2000.0)
        parsed = parse(msg.as_bytes())
        text, page = text_of(parsed), html_of(parsed)
        assert page is not None
        self.assertIn("You: Help <please>", text)
        self.assertIn("Ann: Sure", text)
        self.assertNotIn("created", text)
        self.assertIn("Help &lt;please&gt;", page)
        self.assertEqual(parsed["In-Reply-To"], "<c1-3@example.com>")

    def test_unsubscribe_token_is_bound_to_the_conversation(self) -> None:
        """The link's HMAC verifies for its conversation only, and not under another secret."""
        t = unsubscribe_token(SECRET, "c1")
        self.assertTrue(check_unsubscribe(SECRET, "c1", t))
        self.assertFalse(check_unsubscribe(SECRET, "c2", t))
        self.assertFalse(check_unsubscribe("other", "c1", t))

    def test_address_validation(self) -> None:
        """Plain addresses pass; display names, line breaks, missing domains and overlong ones do not."""
        self.assertTrue(valid_address("a.b+c@example.co.uk"))
        for bad in ("A <a@example.com>", "a@example.com\r\nBcc: x@y.z", "a@", "a@localhost", "x" * 250 + "@a.io",
                    None, 3):
            self.assertFalse(valid_address(bad), bad)


class ConfigTests(unittest.TestCase):
    def test_password_only_from_the_environment_and_never_in_repr(self) -> None:
        """[email] smtp_password from a file (or overrides) is refused; from the environment it is taken and
        the config's repr does not show it."""
        with self.assertRaises(ConfigError) as e:
            load_config(None, environ={}, overrides={"email": {"smtp_username": "u", "smtp_password": "pw"}})
        self.assertEqual(e.exception.key, "email.smtp_password")
        cfg = load_config(None, environ={"SUPPORTCHAT_EMAIL_SMTP_USERNAME": "u",
                                         "SUPPORTCHAT_EMAIL_SMTP_PASSWORD": "hunter2-secret"})
        self.assertEqual(cfg.email.smtp_password, "hunter2-secret")
        self.assertNotIn("hunter2-secret", repr(cfg))
        sender = SmtpEmailSender(reactor, "h", 25, username="u", password="hunter2-secret")  # type: ignore[arg-type]
        self.assertNotIn("hunter2-secret", repr(sender))

    def test_invalid_options_are_refused(self) -> None:
        """starttls must be a known mode, an enabled [email] needs a From address, retry delays are ordered."""
        for section, key in (({"starttls": "maybe"}, "email.starttls"),
                             ({"enabled": True}, "email.from_address"),
                             ({"retry_min_delay": 10.0, "retry_max_delay": 5.0}, "email.retry_max_delay"),
                             ({"smtp_port": 70000}, "email.smtp_port")):
            with self.assertRaises(ConfigError) as e:
                load_config(None, environ={}, overrides={"email": section})
            self.assertEqual(e.exception.key, key)


# -- the outbox and the dispatcher ------------------------------------------------------------------------


class DispatcherTests(unittest.TestCase):
    """The email service on a Clock, a threadless SQLite database and the sender twin (or Twisted's SMTP
    client against a real local SMTP server)."""

    kind = "sqlite"

    def setUp(self) -> None:
        from tests.dbs import threadless_db

        self.db = threadless_db(self, self.kind)
        self.store = SqlEmailStore(self.db)
        self.clock = Clock()
        self.clock.advance(5000)
        self.sender: Any = MemoryEmailSender()
        self.metrics = Metrics()
        self.background = BackgroundTasks()
        self.seq: dict[str, int] = {}

    def dispatcher(self) -> EmailDispatcher:
        d = EmailDispatcher(self.clock, self.store, self.sender, self.metrics, self.background,
                            from_addr="Support <help@example.com>", public_url="https://chat.example.com",
                            secret=SECRET, poll_interval=1.0, retry_min_delay=10.0, retry_max_delay=100.0,
                            retry_for=1000.0, rng=random.Random(1))
        d.startService()
        self.addCleanup(self.stop, d)
        return d

    def stop(self, d: EmailDispatcher) -> Any:
        done = d.stopService()

        def check(_: Any) -> None:
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.assertEqual(self.background.running, 0)

        return done.addCallback(check)

    def conversation(self, conv: str = "c1", lang: str | None = "zh-CN") -> None:
        self.seq[conv] = 0

        def txn(cur: Any) -> None:
            cur.execute("INSERT INTO conversations (id, customer_id, status, created_at, last_seq) "
                        "VALUES (?, ?, 'open', 1000, 0)", (conv, customer_key("alice")))

        self.successResultOf(self.db.run_interaction("conv", txn))
        self.entry(conv, "workflow", "system", EVENT, "created", {"name": "created", **({"lang": lang} if lang else {})})

    def entry(self, conv: str, sender: str, role: str, kind: str, body: str,
              data: dict[str, Any] | None = None) -> None:
        self.seq[conv] += 1
        seq = self.seq[conv]

        def txn(cur: Any) -> None:
            cur.execute("INSERT INTO messages (msg_id, conversation_id, seq, sender_id, sender_role, kind, body, "
                        "data, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (f"{conv}-{seq}", conv, seq, sender, role, kind, body,
                         None if data is None else json.dumps(data), 1000.0 + seq))
            cur.execute("UPDATE conversations SET last_seq = ? WHERE id = ?", (seq, conv))

        self.successResultOf(self.db.run_interaction("entry", txn))

    def note(self, conv: str, body: str) -> None:
        def txn(cur: Any) -> None:
            cur.execute("INSERT INTO work_notes (conversation_id, author_id, body, ts) VALUES (?, 'agent1', ?, 1)",
                        (conv, body))

        self.successResultOf(self.db.run_interaction("note", txn))

    def states(self) -> dict[str, int]:
        return self.successResultOf(self.store.outbox_states())

    def sent(self) -> list[EmailMessage]:
        return [parse(raw) for _, _, raw in self.sender.sent]

    def test_agent_replies_are_threaded_and_transcript_has_no_note(self) -> None:
        """After the visitor leaves an address, each agent reply (not the visitor's own messages, not
        entries written before) is emailed in one thread, in the language of `start`; at close the
        transcript follows in the same thread, without the internal note; nothing is sent twice."""
        self.conversation()
        self.entry("c1", "agent1", "agent", TEXT, "before the address", {"sender_name": "Ann"})
        self.assertEqual(self.successResultOf(self.store.subscribe("c1", "v@example.org", "", True, 5000.0)), "ok")
        self.dispatcher()
        self.entry("c1", "c:alice", "customer", TEXT, "hello?")
        self.entry("c1", "agent1", "agent", TEXT, "first answer", {"sender_name": "Ann"})
        self.note("c1", "SECRET INTERNAL NOTE")
        self.entry("c1", "agent1", "agent", TEXT, "second answer", {"sender_name": "Ann"})
        self.clock.advance(1)
        self.assertEqual(len(self.sender.sent), 1)  # one email per conversation and round: in thread order
        self.clock.advance(1)
        first, second = self.sent()
        self.assertEqual(first["Subject"], "您的客服会话有新回复")
        self.assertEqual(first["Message-ID"], "<c1-4@example.com>")
        self.assertIsNone(first["In-Reply-To"])
        self.assertEqual(second["In-Reply-To"], "<c1-4@example.com>")
        self.assertEqual(second["References"], "<c1-4@example.com>")
        self.assertIn("second answer", text_of(second))
        self.assertEqual(self.sender.sent[0][:2], ("help@example.com", "v@example.org"))
        self.entry("c1", "workflow", "system", EVENT, "closed", {"name": "closed"})
        self.clock.advance(1)
        transcript = self.sent()[2]
        self.assertEqual(transcript["Subject"], "您的客服会话记录")
        self.assertEqual(transcript["In-Reply-To"], "<c1-5@example.com>")
        self.assertEqual(transcript["References"], "<c1-4@example.com> <c1-5@example.com>")
        whole = transcript.as_string()
        self.assertIn("first answer", text_of(transcript))
        self.assertIsNotNone(html_of(transcript))
        self.assertNotIn("SECRET INTERNAL NOTE", whole)
        self.clock.advance(5)
        self.assertEqual(len(self.sender.sent), 3)
        self.assertEqual(self.states(), {"sent": 3})
        self.assertEqual(self.metrics.emails.labels(kind="reply", outcome="sent")._value.get(), 2)

    def test_without_transcript_request_no_transcript(self) -> None:
        """A visitor who did not ask for the transcript gets replies only."""
        self.conversation(lang=None)
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "", False, 5000.0))
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        self.entry("c1", "workflow", "system", EVENT, "closed", {"name": "closed"})
        self.clock.advance(1)
        self.assertEqual([m["Subject"] for m in self.sent()], ["Reply to your support conversation"])

    def test_transcript_only_for_a_visitor_chatting_live(self) -> None:
        """replies=False (the widget while agents are online): agent replies are not emailed, the transcript
        at close is."""
        self.conversation(lang="en")
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "", True, 5000.0, replies=False))
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "live answer")
        self.entry("c1", "workflow", "system", EVENT, "closed", {"name": "closed"})
        self.clock.advance(1)
        self.assertEqual([m["Subject"] for m in self.sent()], ["Transcript of your support conversation"])
        self.assertIsNone(self.sent()[0]["In-Reply-To"])
        self.assertIn("live answer", text_of(self.sent()[0]))

    def test_smtp_down_waits_in_outbox_with_backoff(self) -> None:
        """With the SMTP server down the email stays pending and is retried with growing delays; when the
        server is back it goes out once; after retry_for it would be dead (counted)."""
        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", False, 5000.0))
        self.sender.fail_with = "ConnectionRefusedError"
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        self.clock.advance(1)
        self.assertEqual(self.states(), {"pending": 1})
        failures = self.metrics.emails.labels(kind="reply", outcome="failed")
        self.assertEqual(failures._value.get(), 1)
        self.clock.advance(4)  # within the first delay (5..10 s): no new attempt
        self.assertEqual(failures._value.get(), 1)
        for _ in range(12):
            self.clock.advance(1)
        self.assertEqual(failures._value.get(), 2)
        self.sender.fail_with = None
        for _ in range(40):
            self.clock.advance(1)
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.states(), {"sent": 1})

    def test_gives_up_after_retry_for(self) -> None:
        """An email failing for retry_for seconds is dead: no more attempts, counted as dead."""
        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", False, 5000.0))
        self.sender.fail_with = "down"
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        for _ in range(150):
            self.clock.advance(10)
        self.assertEqual(self.states(), {"dead": 1})
        self.assertEqual(self.metrics.emails.labels(kind="reply", outcome="dead")._value.get(), 1)

    def test_unsubscribe_stops_and_cancels(self) -> None:
        """Unsubscribing drops the queued emails and no later reply is queued."""
        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", True, 5000.0))
        self.sender.fail_with = "down"
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(self.store.unsubscribe("c1", 5001.0)))
        self.sender.fail_with = None
        self.entry("c1", "agent1", "agent", TEXT, "another")
        self.entry("c1", "workflow", "system", EVENT, "closed", {"name": "closed"})
        for _ in range(200):
            self.clock.advance(1)
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.states(), {"cancelled": 1})

    def test_settled_emails_are_purged_after_a_week(self) -> None:
        """Sent and dead emails (holding the conversation) are deleted a week after their last attempt, not
        before."""
        from supportchat.email.dispatcher import KEEP, PURGE_EVERY

        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", False, 5000.0))
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        self.clock.advance(1)
        self.assertEqual(self.states(), {"sent": 1})
        self.sender.fail_with = "down"
        self.entry("c1", "agent1", "agent", TEXT, "another")
        self.clock.advance(1)
        for _ in range(40):
            self.clock.advance(50)
        self.assertEqual(self.states(), {"sent": 1, "dead": 1})  # retry_for (1000 s) passed, not a week
        for _ in range(int((KEEP + PURGE_EVERY) / 50) + 2):
            self.clock.advance(50)
        self.assertEqual(self.states(), {})

    def test_erase_removes_address_and_queued_emails(self) -> None:
        """Erasing a conversation (erase and retention) removes the visitor's address and its queued emails."""
        from supportchat.storage.history import _delete_conversations_batch_txn

        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", True, 5000.0))
        self.sender.fail_with = "down"
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "answer")
        self.clock.advance(1)
        self.assertEqual(self.states(), {"pending": 1})
        self.successResultOf(self.db.run_interaction("erase", _delete_conversations_batch_txn, ["c1"], 100))
        self.assertEqual(self.states(), {})
        self.assertIsNone(self.successResultOf(self.store.subscription("c1")))

    def test_subscribe_checks_the_customer(self) -> None:
        """Only the conversation's own customer can leave an address; an unknown conversation is missing."""
        self.conversation()
        self.assertEqual(self.successResultOf(self.store.subscribe(
            "c1", "v@example.org", "", False, 1.0, customer=customer_key("mallory"))), "forbidden")
        self.assertEqual(self.successResultOf(self.store.subscribe(
            "nope", "v@example.org", "", False, 1.0, customer=customer_key("alice"))), "missing")
        self.assertEqual(self.successResultOf(self.store.subscribe(
            "c1", "v@example.org", "", False, 1.0, customer=customer_key("alice"))), "ok")

    @inlineCallbacks
    def test_real_smtp_server_down_then_back(self) -> Any:
        """Twisted's SMTP client against Twisted's SMTP server on a local port: while the port is closed the
        reply waits in the outbox; once the server listens there, the next retry delivers it with its
        threading headers intact."""
        box = Mailbox()
        port = smtp_server(self, box)
        yield self.flushLoggedErrors()
        # Close it again: the port is known and nothing listens there.
        listening = reactor.listenTCP(0, _SmtpFactory(box), interface="127.0.0.1")  # type: ignore[attr-defined]
        free = listening.getHost().port
        yield listening.stopListening()
        self.sender = SmtpEmailSender(reactor, "127.0.0.1", free, starttls="opportunistic",  # type: ignore[arg-type]
                                      timeout=5.0)
        self.conversation()
        self.successResultOf(self.store.subscribe("c1", "v@example.org", "en", True, 5000.0))
        self.dispatcher()
        self.entry("c1", "agent1", "agent", TEXT, "first answer")
        self.clock.advance(1)
        yield self.background.wait()
        self.assertEqual(self.states(), {"pending": 1})
        self.assertEqual(box.received, [])
        smtp_server(self, box, free)
        for _ in range(12):
            self.clock.advance(1)
            yield self.background.wait()
        yield box.wait_for(1)
        self.assertEqual(self.states(), {"sent": 1})
        self.entry("c1", "agent1", "agent", TEXT, "second answer")
        self.note("c1", "SECRET INTERNAL NOTE")
        self.entry("c1", "workflow", "system", EVENT, "closed", {"name": "closed"})
        for _ in range(3):  # one email per conversation and round: the thread keeps its order
            self.clock.advance(1)
            yield self.background.wait()
        yield box.wait_for(3)
        first, second, transcript = box.messages()
        self.assertEqual([to for to, _ in box.received], ["v@example.org"] * 3)
        self.assertEqual(second["In-Reply-To"], first["Message-ID"])
        self.assertEqual(transcript["In-Reply-To"], second["Message-ID"])
        self.assertIn(first["Message-ID"], transcript["References"])
        self.assertNotIn("SECRET INTERNAL NOTE", box.received[2][1].decode())
        self.assertIn("second answer", text_of(transcript))
        del port


class PostgresDispatcherTests(DispatcherTests):
    """The same on PostgreSQL (skipped when the test server is unreachable)."""

    kind = "postgresql"


class MariadbDispatcherTests(DispatcherTests):
    """The same on MariaDB (skipped when the test server is unreachable)."""

    kind = "mariadb"


class SmtpClientTests(unittest.TestCase):
    """SmtpEmailSender against Twisted's ESMTP server with STARTTLS and AUTH."""

    def secure_server(self, offer_tls: bool = True) -> tuple[Mailbox, Any, list[bytes], Any, int]:
        import os

        from twisted.internet.ssl import Certificate, PrivateCertificate

        from tests.test_websocket import self_signed

        directory = self.mktemp()
        os.makedirs(directory)
        key_path, _, pem = self_signed(directory)
        with open(key_path, "rb") as f:
            cert = PrivateCertificate.loadPEM(f.read() + pem)
        box, logins = Mailbox(), []  # type: tuple[Mailbox, list[bytes]]
        factory = _SecureSmtpFactory(box, cert.options() if offer_tls else None, logins)
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        return box, factory, logins, Certificate.loadPEM(pem), int(listening.getHost().port)

    def sender(self, port: int, trust: Any, **kw: Any) -> SmtpEmailSender:
        from twisted.internet.ssl import optionsForClientTLS

        return SmtpEmailSender(reactor, "localhost", port, timeout=5.0,  # type: ignore[arg-type]
                               context_factory=optionsForClientTLS("localhost", trustRoot=trust), **kw)

    @inlineCallbacks
    def test_starttls_then_auth_delivers(self) -> Any:
        """starttls = required with AUTH: the client upgrades (certificate checked for the host name), logs in
        and the server receives the message after TLS."""
        box, factory, logins, trust, port = self.secure_server()
        yield self.sender(port, trust, username="user", password="pw", starttls="required").send(
            "help@example.com", "v@example.org", b"Subject: hi\n\nhello\n")
        self.assertEqual(logins, [b"user"])
        self.assertEqual(factory.tls, [True])
        self.assertIn(b"hello", box.received[0][1])

    @inlineCallbacks
    def test_wrong_password_or_missing_tls_fails(self) -> Any:
        """A wrong password, an untrusted certificate, or starttls = required against a server without
        STARTTLS: EmailError, nothing delivered (the email would stay in the outbox)."""
        from supportchat.email.sender import EmailError

        box, _, logins, trust, port = self.secure_server()
        with self.assertRaises(EmailError):
            yield self.sender(port, trust, username="user", password="wrong", starttls="required").send(
                "help@example.com", "v@example.org", b"Subject: hi\n\nhello\n")
        from twisted.internet.ssl import optionsForClientTLS

        untrusted = SmtpEmailSender(reactor, "localhost", port, timeout=5.0,  # type: ignore[arg-type]
                                    username="user", password="pw", starttls="required",
                                    context_factory=optionsForClientTLS("localhost"))
        with self.assertRaises(EmailError):
            yield untrusted.send("help@example.com", "v@example.org", b"Subject: hi\n\nhello\n")
        plain_box, _, _, trust2, plain_port = self.secure_server(offer_tls=False)
        with self.assertRaises(EmailError):
            yield self.sender(plain_port, trust2, username="user", password="pw", starttls="required").send(
                "help@example.com", "v@example.org", b"Subject: hi\n\nhello\n")
        self.assertEqual((box.received, plain_box.received), ([], []))
        self.assertEqual(logins, [])


# -- the whole server ----------------------------------------------------------------------------------------


class EmailServerTests(unittest.TestCase):
    """A real server with [email] on, sending to Twisted's SMTP server started by the test."""

    def sections(self) -> dict[str, Any]:
        return {}

    @inlineCallbacks
    def setUp(self) -> Any:
        self.box = Mailbox()
        port = smtp_server(self, self.box)
        self.running = yield start_server(self, email={
            "enabled": True, "smtp_host": "127.0.0.1", "smtp_port": port, "starttls": "opportunistic",
            "from_address": "Support <help@example.com>", "public_url": "https://chat.example.com",
            "poll_interval": 0.05, "retry_min_delay": 0.05, "retry_max_delay": 0.2, "timeout": 5.0},
            **self.sections())
        if self.running.server.redis_mode:
            yield self.running.server.get_redis().connected_once
        self.server = self.running.server
        self.api = Api(self.running.port)

    @inlineCallbacks
    def test_offline_form_replies_transcript_and_unsubscribe(self) -> Any:
        """POST /api/v1/email (the visitor's own conversation only, a valid address) then an agent's replies
        reach the SMTP server threaded, the transcript at close has no internal note, and the signed
        unsubscribe link (GET shows a form, POST stops) ends the emails; a forged link does nothing."""
        conv, _ = yield self.server.get_store().open_conversation(customer_key("alice"), self.server.reactor.seconds())
        alice = token("alice")
        code, body = yield self.api.call("POST", "/email", token("bob"), {"conversation": conv.id, "email": "a@b.io"})
        self.assertEqual(code, 403, body)
        code, body = yield self.api.call("POST", "/email", token("ag", "agent"), {"conversation": conv.id,
                                                                                  "email": "a@b.io"})
        self.assertEqual(code, 403, body)
        code, body = yield self.api.call("POST", "/email", alice, {"conversation": conv.id, "email": "a@b\r\nBcc: x"})
        self.assertEqual(code, 400, body)
        code, body = yield self.api.call("POST", "/email", alice, {"conversation": conv.id, "email": "a@b.io",
                                                                   "replies": False})
        self.assertEqual(code, 400, body)  # neither replies nor the transcript
        code, body = yield self.api.call("POST", "/email", alice, {"conversation": conv.id,
                                                                   "email": "visitor@example.org",
                                                                   "transcript": True, "lang": "en"})
        self.assertEqual(code, 200, body)
        writer = self.server.get_writer()
        now = self.server.reactor.seconds
        for i, text in enumerate(("first answer", "second answer")):
            data = {"attachments": [{"id": "att_email1", "name": "invoice.pdf"}]} if i else None
            yield writer.write(AppendRequest(conversation_id=conv.id, sender_id="agent1", sender_role="agent",
                                             kind=TEXT, body=text, ts=now(), client_msg_id=f"a{i}", join=True,
                                             data=data))
        yield self.server.get_workflow_store().add_note(conv.id, "agent1", "SECRET INTERNAL NOTE", now(), 2)
        yield writer.event(conv.id, "workflow", "system", "closed", {"name": "closed"}, "closed",
                           require_participant=False, key=f"closed:{conv.id}")
        yield self.box.wait_for(3)
        first, second, transcript = self.box.messages()
        self.assertEqual(second["In-Reply-To"], first["Message-ID"])
        self.assertEqual(transcript["In-Reply-To"], second["Message-ID"])
        self.assertNotIn("SECRET INTERNAL NOTE", self.box.received[2][1].decode())
        self.assertIn("second answer", text_of(transcript))
        # The attachment is a signed link (a week by default), never the file.
        found = re.search(r"invoice\.pdf <(https://chat\.example\.com/api/v1/attachments/att_email1\?exp=(\d+)"
                          r"&sig=([\w-]+))>", text_of(second))
        assert found is not None, text_of(second)
        self.assertGreater(int(found.group(2)), now() + 6 * 86400)
        self.assertTrue(self.server.get_link_signer().check("att_email1", "file", found.group(2), found.group(3)))
        self.assertEqual([p.get_content_type() for p in second.walk()], ["text/plain"])
        link = first["List-Unsubscribe"].strip("<>")
        path = link.replace("https://chat.example.com", f"http://127.0.0.1:{self.running.port}")
        r = yield self.api.http.request("GET", path + "x")
        self.assertEqual(r.code, 404)
        r = yield self.api.http.request("GET", path)
        self.assertEqual(r.code, 200)
        self.assertIn("<form", (yield r.text()))
        r = yield self.api.http.request("POST", path)
        self.assertEqual(r.code, 200)
        sub = yield self.server.get_email_store().subscription(conv.id)
        self.assertIsNone(sub)


class RedisModeEmailServerTests(EmailServerTests):
    """The same with Redis in between: messages go to the stream, the persister writes them to SQL, and the
    email service (on the persister's node) reads them there."""

    def sections(self) -> dict[str, Any]:
        import os

        from tests import redis_support

        if redis_support.REDIS_SKIP:
            raise unittest.SkipTest(redis_support.REDIS_SKIP)
        return {"redis": {"url": redis_support.shared().url, "prefix": f"em{os.getpid()}{id(self)}:"}}
