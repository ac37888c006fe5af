"""Composing the emails a visitor gets: an agent's reply (threaded by
``Message-ID`` / ``In-Reply-To`` / ``References``) and the transcript at
close. Templates per language (English, Simplified Chinese); every email
has a plain-text part, transcripts an HTML part too; attachments are links;
internal notes are never in the log these read, so never in an email.
The unsubscribe link carries an HMAC of the conversation id."""

from __future__ import annotations

import email.policy
import hashlib
import hmac
import html
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from typing import Callable, Sequence
from urllib.parse import quote

from supportchat.storage.models import EVENT, Message

LANGS = ("en", "zh")

TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "reply_subject": "Reply to your support conversation",
        "reply_intro": "{agent} replied to your conversation:",
        "transcript_subject": "Transcript of your support conversation",
        "transcript_intro": "Here is the transcript of your conversation.",
        "attachment": "Attachment",
        "you": "You",
        "agent": "Support",
        "bot": "Assistant",
        "unsubscribe": "Stop these emails: {url}",
        "unsubscribe_html": "Stop these emails",
    },
    "zh": {
        "reply_subject": "您的客服会话有新回复",
        "reply_intro": "{agent} 回复了您的会话：",
        "transcript_subject": "您的客服会话记录",
        "transcript_intro": "以下是您的会话记录。",
        "attachment": "附件",
        "you": "您",
        "agent": "客服",
        "bot": "助手",
        "unsubscribe": "退订这些邮件：{url}",
        "unsubscribe_html": "退订这些邮件",
    },
}


def pick_lang(lang: str | None) -> str:
    """``zh``, ``zh-CN``, ``zh-Hans`` -> zh; anything else -> en."""
    low = (lang or "").strip().lower()
    return "zh" if low == "zh" or low.startswith("zh-") or low.startswith("zh_") else "en"


def unsubscribe_token(secret: str, conversation_id: str) -> str:
    """The signature of an unsubscribe link (HMAC-SHA256, hex)."""
    return hmac.new(secret.encode(), b"supportchat/email/unsubscribe/v1:" + conversation_id.encode(),
                    hashlib.sha256).hexdigest()


def check_unsubscribe(secret: str, conversation_id: str, token: str) -> bool:
    return hmac.compare_digest(unsubscribe_token(secret, conversation_id), token)


def unsubscribe_url(public_url: str, secret: str, conversation_id: str) -> str:
    return (f"{public_url.rstrip('/')}/api/v1/unsubscribe?conversation={quote(conversation_id)}"
            f"&token={unsubscribe_token(secret, conversation_id)}")


def _sender_label(m: Message, t: dict[str, str]) -> str:
    if m.sender_role == "customer":
        return t["you"]
    name = (m.data or {}).get("sender_name")
    if isinstance(name, str) and name:
        return name
    return t["bot"] if m.sender_role == "bot" else t["agent"]


def _attachment_links(m: Message, attachment_url: Callable[[str], str]) -> list[tuple[str, str]]:
    """(name, url) of a message's attachments: links, never the files."""
    out = []
    for a in (m.data or {}).get("attachments", []) or []:
        if isinstance(a, dict) and a.get("id"):
            out.append((str(a.get("name") or a["id"]), attachment_url(str(a["id"]))))
    return out


def _base(from_addr: str, to_addr: str, subject: str, domain: str, now: float,
          message_id: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = to_addr
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    return msg


def compose_reply(message: Message, *, lang: str, from_addr: str, to_addr: str, domain: str, attachment_url: Callable[[str], str],
                  unsubscribe: str, thread_root: str | None, thread_last: str | None,
                  now: float | None = None) -> EmailMessage:
    """One agent reply as an email, in the conversation's thread."""
    t = TEMPLATES[pick_lang(lang)]
    now = time.time() if now is None else now
    msg = _base(from_addr, to_addr, t["reply_subject"], domain, now,
                message_id=f"<{message.msg_id}@{domain}>")
    if thread_last:
        msg["In-Reply-To"] = thread_last
        refs = [r for r in (thread_root, thread_last) if r]
        msg["References"] = " ".join(dict.fromkeys(refs))
    msg["List-Unsubscribe"] = f"<{unsubscribe}>"
    lines = [t["reply_intro"].format(agent=_sender_label(message, t)), "", message.body]
    for name, url in _attachment_links(message, attachment_url):
        lines.append(f"{t['attachment']}: {name} <{url}>")
    lines += ["", "--", t["unsubscribe"].format(url=unsubscribe)]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def compose_transcript(messages: Sequence[Message], *, lang: str, from_addr: str, to_addr: str, domain: str,
                       attachment_url: Callable[[str], str], unsubscribe: str, thread_root: str | None, thread_last: str | None,
                       conversation_id: str, now: float | None = None) -> EmailMessage:
    """The conversation's chat messages (text and HTML); lifecycle entries
    and anything that is not a chat message are left out."""
    t = TEMPLATES[pick_lang(lang)]
    now = time.time() if now is None else now
    msg = _base(from_addr, to_addr, t["transcript_subject"], domain, now,
                message_id=f"<transcript.{conversation_id}@{domain}>")
    if thread_last:
        msg["In-Reply-To"] = thread_last
        msg["References"] = " ".join(dict.fromkeys(r for r in (thread_root, thread_last) if r))
    msg["List-Unsubscribe"] = f"<{unsubscribe}>"
    text = [t["transcript_intro"], ""]
    rows: list[str] = []
    for m in messages:
        if m.kind == EVENT:
            continue
        when = datetime.fromtimestamp(m.ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        who = _sender_label(m, t)
        text.append(f"[{when}] {who}: {m.body}")
        cell = html.escape(m.body).replace("\n", "<br>")
        for name, url in _attachment_links(m, attachment_url):
            text.append(f"    {t['attachment']}: {name} <{url}>")
            cell += f'<br><a href="{html.escape(url)}">{html.escape(t["attachment"])}: {html.escape(name)}</a>'
        rows.append(f"<tr><td>{html.escape(when)}</td><th>{html.escape(who)}</th><td>{cell}</td></tr>")
    text += ["", "--", t["unsubscribe"].format(url=unsubscribe)]
    msg.set_content("\n".join(text) + "\n")
    page = (f'<!doctype html><html lang="{pick_lang(lang)}"><body><p>{html.escape(t["transcript_intro"])}</p>'
            f'<table>{"".join(rows)}</table><p><a href="{html.escape(unsubscribe)}">'
            f'{html.escape(t["unsubscribe_html"])}</a></p></body></html>')
    msg.add_alternative(page, subtype="html")
    return msg


# Lines end in LF: Twisted's SMTP client turns them into CRLF on the wire.
# Long headers (the unsubscribe URL) are not folded below 998 characters.
_POLICY = email.policy.default.clone(linesep="\n", max_line_length=998)


def as_bytes(msg: EmailMessage) -> bytes:
    """The message as stored in the outbox and given to the sender."""
    return msg.as_bytes(policy=_POLICY)


