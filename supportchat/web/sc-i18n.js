// Message catalogs of the web UI and the helpers that format for a language.
// English and Simplified Chinese are complete; Arabic covers the widget and
// the shared message rendering (enough to prove the right-to-left layout) and
// falls back to English elsewhere. A page's language: the widget's
// data-lang, else ?lang= in the page address, else the first of the
// browser's languages we have (navigator.languages), else English.
// tests/test_i18n.py checks that en and zh-Hans have the same keys, that ar
// has no key en lacks, and that every key a page names is in en.
//
// Texts take {placeholders}: t("ev.joined", { name: "Alice" }).

export const CATALOGS = {
  en: {
    "auth.expired": "Your session has expired. Please sign in again.",
    "auth.refused": "The server no longer accepts your sign-in. Please sign in again.",
    "auth.disabled": "Your account has been disabled or your sign-in was revoked. Ask an administrator, then sign in again.",
    "auth.state": "Signed out",
    "widget.auth.refused": "Chat is unavailable: this page's chat sign-in was not accepted. Reload the page, or try again later.",
    "widget.auth.visitor": "Your chat session has ended and a new one could not be started.",
    "widget.auth.state": "Not connected",
    "widget.auth.retry": "Start a new chat session",
    "widget.auth.retryToken": "Try again",
    "attach.button": "Attach a file",
    "attach.open": "Open",
    "attach.uploading": "Uploading…",
    "attach.retry": "Retry",
    "attach.close": "Close",
    "attach.openOriginal": "Open the original",
    "attach.error.too_large": "This file is too large.",
    "attach.error.unsupported_type": "This type of file cannot be sent. Images, PDF and text files can.",
    "attach.error.corrupt_image": "This image could not be read.",
    "attach.error.too_many_pixels": "This image is too large.",
    "attach.error.too_many_frames": "This animation is too long.",
    "attach.error.infected": "This file was refused by the virus scanner.",
    "attach.error.rate_limited": "Too many uploads. Please wait a moment.",
    "attach.error.quota_exceeded": "You have uploaded too much today.",
    "attach.error.other": "The file could not be uploaded. Please try again.",
    "conn.open": "Online",
    "conn.offline": "Offline, reconnecting…",
    "conn.connecting": "Connecting…",
    "msg.you": "You",
    "msg.agent": "Agent",
    "msg.bot": "Assistant",
    "msg.customer": "Customer",
    "msg.system": "Support",
    "msg.sending": "Sending…",
    "msg.failed": "Not sent",
    "msg.sent": "Sent",
    "msg.seen": "Seen",
    "msg.retry": "Retry",
    "msg.discard": "Discard",
    "msg.suggested": "Suggested replies",
    "msg.note": "Internal note",
    "ev.created": "Conversation started",
    "ev.queued": "Waiting for an agent",
    "ev.requeued": "Back in the queue: {name} is no longer available",
    "ev.joined": "{name} joined the conversation",
    "ev.transferredAgent": "Transferred to {name}",
    "ev.transferredTeam": "Transferred to another team",
    "ev.closed": "The conversation was closed",
    "ev.reopened": "The conversation was reopened",
    "ev.afterHours": "We're away right now. An agent will answer from {when}.",
    "ev.handoff": "Connecting you with a human agent",
    "ev.handoffAfterHours": "Your message is saved for our agents",
    "ev.left": "{name} left the conversation",
    "ev.other": "Conversation update",
    "ev.someone": "An agent",
    "time.s": "{n} s",
    "time.min": "{n} min",
    "time.h": "{h} h {m} min",
    "widget.title": "Support",
    "widget.greeting": "Hi! Ask us anything, we usually answer in a few minutes.",
    "widget.open": "Open support chat",
    "widget.openUnread": "Open support chat, {n} unread",
    "widget.close": "Close chat",
    "widget.dialog": "{title} chat",
    "widget.log": "Conversation",
    "widget.typing": "{name} is typing…",
    "widget.queueNext": "You are next in line for an agent.",
    "widget.queuePos": "You are number {n} in the queue for an agent.",
    "widget.rateGroup": "Rate this conversation",
    "widget.rateAsk": "How did we do?",
    "widget.star": "{n} of 5 stars",
    "widget.rated": "Thank you for your feedback!",
    "widget.comment": "Add a comment (optional), then pick the stars",
    "widget.rateFailed": "Could not send the rating: {error}",
    "widget.input": "Type your message",
    "widget.placeholder": "Type your message…",
    "widget.send": "Send",
    "widget.form": "Send a message",
    "widget.restart": "Start a new conversation",
    "widget.counter": "{n} of {max} characters",
    "widget.afterHours": "We're closed right now. Leave a message: an agent will answer from {when}.",
    "widget.nobodyOnline": "No agent is online right now. Leave a message and we'll answer as soon as someone is back.",
    "widget.email.form": "Get the answer by email",
    "widget.email.offer": "Leave your email address and we'll send the answer there too.",
    "widget.email.label": "Your email address",
    "widget.email.placeholder": "name@example.com",
    "widget.email.save": "Save",
    "widget.email.transcript": "Also email me the conversation when it ends",
    "widget.email.saved": "Thank you: replies will also go to {email}. Each email has a link to stop them.",
    "widget.email.invalid": "Please enter an email address like name@example.com.",
    "widget.email.failed": "Could not save the address. Please try again.",
    "widget.email.offerTranscript": "Want a copy? Leave your email address and we'll send you this conversation when it ends.",
    "widget.email.savedTranscript": "Thank you: the conversation will be sent to {email} when it ends.",
    "console.title": "Agent console",
    "console.skip": "Skip to message box",
    "console.user": "User name",
    "console.password": "Password",
    "console.signIn": "Sign in",
    "console.tokenSummary": "Sign in with a token",
    "console.tokenHint": "Paste a token made by this command:",
    "console.token": "Agent token",
    "console.useToken": "Use token",
    "console.needLogin": "Enter your user name and password.",
    "console.noPassword": "Password sign-in is not available on this server; sign in with a token.",
    "console.signInFailed": "Sign-in failed (HTTP {status}).",
    "console.unreachable": "Cannot reach the server.",
    "console.badToken": "That is not a valid, unexpired agent or admin token.",
    "console.conn.open": "Connected",
    "console.status": "My status",
    "console.status.online": "Online",
    "console.status.away": "Away",
    "console.status.offline": "Offline",
    "console.sound": "Sound",
    "console.signOut": "Sign out",
    "console.conversations": "Conversations",
    "console.queue": "Queue",
    "console.mine": "My conversations",
    "console.pick": "Pick a conversation from the queue or your list.",
    "console.transfer": "Transfer",
    "console.close": "Close",
    "console.transferTo": "Transfer to",
    "console.transferPlaceholder": "agent id, or team:NAME",
    "console.note": "Note",
    "console.notePlaceholder": "internal note (optional)",
    "console.cancel": "Cancel",
    "console.notes": "Internal notes",
    "console.noteFrom": "Internal note from {name}:",
    "console.colleague": "a colleague",
    "console.older": "Load earlier messages",
    "console.messages": "Messages",
    "console.reply": "Reply",
    "console.replyPlaceholder": "Reply… (type / for canned replies, Enter to send)",
    "console.canned": "Canned replies",
    "console.agents": "Agents",
    "console.teams": "Teams (back to the queue)",
    "console.defaultTeam": "Default team",
    "console.targetAgent": "{name} — {status}, {load}/{capacity}",
    "console.targetTeam": "{name}",
    "console.targetOffline": "{name} is offline: they will see the conversation only when they come back.",
    "console.targetAway": "{name} is away: they may not answer soon.",
    "console.targetFull": "{name} is full: the transfer will be refused. Pick someone else or a team.",
    "console.noteMode": "Internal note",
    "console.notePlaceholderMode": "Internal note for your team (the customer never sees it; @id notifies an agent)",
    "console.noteFailed": "The note could not be saved: {error}",
    "console.mentioned": "{name} mentioned you in a note about {who}.",
    "console.otherConversation": "a conversation you are not in",
    "console.offlinePrompt": "You are offline: no conversation will be assigned to you.",
    "console.goOnline": "Go online",
    "console.saveCanned": "Save as reply",
    "console.shortcut": "Shortcut",
    "console.save": "Save",
    "console.cannedMine": "mine",
    "console.cannedTeam": "team",
    "console.cannedSaved": "Saved: type {shortcut} to use it.",
    "console.cannedTaken": "You already have a reply with that shortcut.",
    "console.cannedBad": "A shortcut is 1-32 letters, digits, _ or -.",
    "console.cannedFailed": "The reply could not be saved. Please try again.",
    "console.send": "Send",
    "console.customer": "Customer",
    "console.customerId": "Customer id",
    "console.conversation": "Conversation",
    "console.started": "Started",
    "console.name": "Name",
    "console.email": "Email",
    "console.phone": "Phone",
    "console.masked": "{field} (masked)",
    "console.accept": "Accept",
    "console.acceptWho": "Accept conversation with {name}",
    "console.waiting": "waiting {time}",
    "console.count": "{n} messages",
    "console.nobody": "Nobody is waiting.",
    "console.none": "No conversations yet.",
    "console.closedMark": "{name} (closed)",
    "console.unread": "{n} unread",
    "console.typing": "Customer is typing…",
    "console.acceptFailed": "Could not accept: {error}",
    "console.unsupported": "This server does not support {what} yet.",
    "console.failed": "Could not {what}: {error}",
    "console.doStatus": "change your status",
    "console.doClose": "close the conversation",
    "console.doTransfer": "transfer the conversation",
    "console.newMessage": "({n}) New message",
    "console.visitor": "Visitor {tag}",
    "conv.open": "open",
    "conv.queued": "queued",
    "conv.closed": "closed",
    "conv.left": "left",
    "conv.transferred": "transferred",
  },
  "zh-Hans": {
    "auth.expired": "您的登录已过期，请重新登录。",
    "auth.refused": "服务器不再接受您的登录凭据，请重新登录。",
    "auth.disabled": "您的账户已被停用，或您的登录已被撤销。请联系管理员，然后重新登录。",
    "auth.state": "已退出登录",
    "widget.auth.refused": "聊天暂不可用：此页面的聊天登录未被接受。请刷新页面，或稍后再试。",
    "widget.auth.visitor": "您的聊天会话已结束，且无法开始新的会话。",
    "widget.auth.state": "未连接",
    "widget.auth.retry": "开始新的聊天会话",
    "widget.auth.retryToken": "重试",
    "attach.button": "添加附件",
    "attach.open": "打开",
    "attach.uploading": "正在上传…",
    "attach.retry": "重试",
    "attach.close": "关闭",
    "attach.openOriginal": "打开原图",
    "attach.error.too_large": "文件太大。",
    "attach.error.unsupported_type": "无法发送此类型的文件。可以发送图片、PDF 和文本文件。",
    "attach.error.corrupt_image": "无法读取此图片。",
    "attach.error.too_many_pixels": "图片尺寸太大。",
    "attach.error.too_many_frames": "动画太长。",
    "attach.error.infected": "病毒扫描拒绝了此文件。",
    "attach.error.rate_limited": "上传过于频繁，请稍候。",
    "attach.error.quota_exceeded": "您今天上传的文件已达上限。",
    "attach.error.other": "文件上传失败，请重试。",
    "conn.open": "在线",
    "conn.offline": "已离线，正在重新连接…",
    "conn.connecting": "正在连接…",
    "msg.you": "我",
    "msg.agent": "客服",
    "msg.bot": "智能助手",
    "msg.customer": "客户",
    "msg.system": "客服中心",
    "msg.sending": "发送中…",
    "msg.failed": "未发送",
    "msg.sent": "已发送",
    "msg.seen": "已读",
    "msg.retry": "重试",
    "msg.discard": "放弃",
    "msg.suggested": "推荐回复",
    "msg.note": "内部备注",
    "ev.created": "会话已开始",
    "ev.queued": "正在等待客服接入",
    "ev.requeued": "已重新排队：{name} 暂时无法服务",
    "ev.joined": "{name} 已加入会话",
    "ev.transferredAgent": "已转接给 {name}",
    "ev.transferredTeam": "已转接到其他团队",
    "ev.closed": "会话已结束",
    "ev.reopened": "会话已重新打开",
    "ev.afterHours": "我们现在不在工作时间。客服将于 {when} 起回复您。",
    "ev.handoff": "正在为您转接人工客服",
    "ev.handoffAfterHours": "您的留言已保存，客服上班后会回复您",
    "ev.left": "{name} 已离开会话",
    "ev.other": "会话状态已更新",
    "ev.someone": "一位客服",
    "time.s": "{n} 秒",
    "time.min": "{n} 分钟",
    "time.h": "{h} 小时 {m} 分钟",
    "widget.title": "在线客服",
    "widget.greeting": "您好！有什么问题都可以问我们，我们通常几分钟内回复。",
    "widget.open": "打开在线客服",
    "widget.openUnread": "打开在线客服，{n} 条未读",
    "widget.close": "关闭聊天",
    "widget.dialog": "{title} 聊天",
    "widget.log": "会话内容",
    "widget.typing": "{name} 正在输入…",
    "widget.queueNext": "下一位就轮到您了，请稍候。",
    "widget.queuePos": "您前面还有 {n} 位，正在排队等待客服。",
    "widget.rateGroup": "为本次服务评分",
    "widget.rateAsk": "您对本次服务满意吗？",
    "widget.star": "{n} 星（满分 5 星）",
    "widget.rated": "感谢您的反馈！",
    "widget.comment": "补充意见（可选），然后选择星级",
    "widget.rateFailed": "评分发送失败：{error}",
    "widget.input": "输入消息",
    "widget.placeholder": "请输入消息…",
    "widget.send": "发送",
    "widget.form": "发送消息",
    "widget.restart": "开始新的会话",
    "widget.counter": "已输入 {n} / {max} 字",
    "widget.afterHours": "现在是非工作时间。请留言，客服将于 {when} 起回复您。",
    "widget.nobodyOnline": "当前没有客服在线。请留言，客服上线后会尽快回复您。",
    "widget.email.form": "通过邮件接收回复",
    "widget.email.offer": "留下您的邮箱地址，我们也会把回复发送到该邮箱。",
    "widget.email.label": "您的邮箱地址",
    "widget.email.placeholder": "name@example.com",
    "widget.email.save": "保存",
    "widget.email.transcript": "会话结束时，也将会话记录发送到我的邮箱",
    "widget.email.saved": "谢谢：回复也将发送到 {email}。每封邮件都附有退订链接。",
    "widget.email.invalid": "请输入有效的邮箱地址，例如 name@example.com。",
    "widget.email.failed": "无法保存该地址，请重试。",
    "widget.email.offerTranscript": "需要会话副本吗？留下您的邮箱地址，会话结束时我们会将记录发送给您。",
    "widget.email.savedTranscript": "谢谢：会话结束时，记录将发送到 {email}。",
    "console.title": "客服工作台",
    "console.skip": "跳到消息输入框",
    "console.user": "用户名",
    "console.password": "密码",
    "console.signIn": "登录",
    "console.tokenSummary": "使用令牌登录",
    "console.tokenHint": "粘贴由以下命令生成的令牌：",
    "console.token": "客服令牌",
    "console.useToken": "使用令牌",
    "console.needLogin": "请输入用户名和密码。",
    "console.noPassword": "此服务器不支持密码登录，请使用令牌登录。",
    "console.signInFailed": "登录失败（HTTP {status}）。",
    "console.unreachable": "无法连接到服务器。",
    "console.badToken": "这不是一个有效且未过期的客服或管理员令牌。",
    "console.conn.open": "已连接",
    "console.status": "我的状态",
    "console.status.online": "在线",
    "console.status.away": "离开",
    "console.status.offline": "离线",
    "console.sound": "声音提醒",
    "console.signOut": "退出登录",
    "console.conversations": "会话",
    "console.queue": "排队中",
    "console.mine": "我的会话",
    "console.pick": "请从排队列表或我的会话中选择一个会话。",
    "console.transfer": "转接",
    "console.close": "结束会话",
    "console.transferTo": "转接给",
    "console.transferPlaceholder": "客服 id，或 team:团队名",
    "console.note": "备注",
    "console.notePlaceholder": "内部备注（可选）",
    "console.cancel": "取消",
    "console.notes": "内部备注",
    "console.noteFrom": "来自 {name} 的内部备注：",
    "console.colleague": "一位同事",
    "console.older": "加载更早的消息",
    "console.messages": "消息",
    "console.reply": "回复",
    "console.replyPlaceholder": "回复…（输入 / 使用快捷回复，按 Enter 发送）",
    "console.canned": "快捷回复",
    "console.agents": "客服",
    "console.teams": "团队（重新排队）",
    "console.defaultTeam": "默认团队",
    "console.targetAgent": "{name} — {status}，{load}/{capacity}",
    "console.targetTeam": "{name}",
    "console.targetOffline": "{name} 当前离线：上线后才会看到该会话。",
    "console.targetAway": "{name} 暂时离开：可能无法及时回复。",
    "console.targetFull": "{name} 已满额：转接会被拒绝。请选择其他客服或团队。",
    "console.noteMode": "内部备注",
    "console.notePlaceholderMode": "团队内部备注（客户看不到；@id 可提醒客服）",
    "console.noteFailed": "备注保存失败：{error}",
    "console.mentioned": "{name} 在关于 {who} 的备注中提到了您。",
    "console.otherConversation": "一个您未参与的会话",
    "console.offlinePrompt": "您当前为离线状态，系统不会为您分配会话。",
    "console.goOnline": "切换为在线",
    "console.saveCanned": "存为快捷回复",
    "console.shortcut": "快捷键",
    "console.save": "保存",
    "console.cannedMine": "个人",
    "console.cannedTeam": "团队",
    "console.cannedSaved": "已保存：输入 {shortcut} 即可使用。",
    "console.cannedTaken": "您已有使用该快捷键的回复。",
    "console.cannedBad": "快捷键须为 1-32 个字母、数字、_ 或 -。",
    "console.cannedFailed": "快捷回复保存失败，请重试。",
    "console.send": "发送",
    "console.customer": "客户",
    "console.customerId": "客户 id",
    "console.conversation": "会话",
    "console.started": "开始时间",
    "console.name": "姓名",
    "console.email": "邮箱",
    "console.phone": "电话",
    "console.masked": "{field}（已隐藏）",
    "console.accept": "接入",
    "console.acceptWho": "接入与 {name} 的会话",
    "console.waiting": "已等待 {time}",
    "console.count": "{n} 条消息",
    "console.nobody": "目前没有人在排队。",
    "console.none": "暂无会话。",
    "console.closedMark": "{name}（已结束）",
    "console.unread": "{n} 条未读",
    "console.typing": "客户正在输入…",
    "console.acceptFailed": "无法接入：{error}",
    "console.unsupported": "此服务器尚不支持{what}。",
    "console.failed": "无法{what}：{error}",
    "console.doStatus": "更改您的状态",
    "console.doClose": "结束会话",
    "console.doTransfer": "转接会话",
    "console.newMessage": "（{n}）新消息",
    "console.visitor": "访客 {tag}",
    "conv.open": "进行中",
    "conv.queued": "排队中",
    "conv.closed": "已结束",
    "conv.left": "已离开",
    "conv.transferred": "已转接",
  },
  ar: {
    "conn.open": "متصل",
    "conn.offline": "غير متصل، جارٍ إعادة الاتصال…",
    "conn.connecting": "جارٍ الاتصال…",
    "msg.you": "أنت",
    "msg.agent": "موظف الدعم",
    "msg.bot": "المساعد",
    "msg.customer": "العميل",
    "msg.system": "الدعم",
    "msg.sending": "جارٍ الإرسال…",
    "msg.failed": "لم يُرسل",
    "msg.sent": "أُرسلت",
    "msg.seen": "شوهدت",
    "msg.retry": "إعادة المحاولة",
    "msg.discard": "تجاهل",
    "msg.suggested": "ردود مقترحة",
    "ev.queued": "بانتظار موظف الدعم",
    "ev.joined": "انضم {name} إلى المحادثة",
    "ev.transferredAgent": "حُوّلت المحادثة إلى {name}",
    "ev.closed": "أُغلقت المحادثة",
    "ev.reopened": "أُعيد فتح المحادثة",
    "ev.afterHours": "نحن خارج أوقات العمل الآن. سيرد عليك أحد موظفينا ابتداءً من {when}.",
    "ev.handoff": "جارٍ تحويلك إلى موظف دعم",
    "ev.someone": "موظف دعم",
    "widget.title": "الدعم",
    "widget.greeting": "مرحبًا! اسألنا عن أي شيء، نرد عادةً خلال دقائق.",
    "widget.open": "افتح محادثة الدعم",
    "widget.openUnread": "افتح محادثة الدعم، {n} غير مقروءة",
    "widget.close": "أغلق المحادثة",
    "widget.dialog": "محادثة {title}",
    "widget.log": "المحادثة",
    "widget.typing": "{name} يكتب…",
    "widget.queueNext": "أنت التالي في الدور.",
    "widget.queuePos": "ترتيبك {n} في قائمة الانتظار.",
    "widget.rateGroup": "قيّم هذه المحادثة",
    "widget.rateAsk": "كيف كانت خدمتنا؟",
    "widget.star": "{n} من 5 نجوم",
    "widget.rated": "شكرًا على ملاحظاتك!",
    "widget.rateFailed": "تعذّر إرسال التقييم: {error}",
    "widget.comment": "أضف تعليقًا (اختياري)، ثم اختر النجوم",
    "widget.input": "اكتب رسالتك",
    "widget.placeholder": "اكتب رسالتك…",
    "widget.send": "إرسال",
    "widget.form": "أرسل رسالة",
    "widget.restart": "ابدأ محادثة جديدة",
    "widget.counter": "{n} من {max} حرفًا",
    "widget.afterHours": "نحن مغلقون الآن. اترك رسالة وسيرد عليك أحد موظفينا ابتداءً من {when}.",
    "widget.nobodyOnline": "لا يوجد موظف متصل الآن. اترك رسالة وسنرد عليك فور عودة أحدهم.",
    "widget.email.form": "احصل على الرد عبر البريد الإلكتروني",
    "widget.email.offer": "اترك عنوان بريدك الإلكتروني وسنرسل الرد إليه أيضًا.",
    "widget.email.label": "عنوان بريدك الإلكتروني",
    "widget.email.placeholder": "name@example.com",
    "widget.email.save": "حفظ",
    "widget.email.transcript": "أرسل لي المحادثة بالبريد عند انتهائها أيضًا",
    "widget.email.saved": "شكرًا: ستصل الردود أيضًا إلى {email}. في كل رسالة رابط لإيقافها.",
    "widget.email.invalid": "يرجى إدخال عنوان بريد إلكتروني مثل name@example.com.",
    "widget.email.failed": "تعذّر حفظ العنوان. يرجى المحاولة مرة أخرى.",
    "widget.email.offerTranscript": "هل تريد نسخة؟ اترك عنوان بريدك الإلكتروني وسنرسل إليك هذه المحادثة عند انتهائها.",
    "widget.email.savedTranscript": "شكرًا: ستُرسل المحادثة إلى {email} عند انتهائها.",
    "attach.button": "إرفاق ملف",
    "attach.open": "فتح",
    "attach.uploading": "جارٍ الرفع…",
    "attach.retry": "إعادة المحاولة",
    "attach.close": "إغلاق",
    "attach.openOriginal": "فتح الأصل",
    "attach.error.too_large": "هذا الملف كبير جدًا.",
    "attach.error.unsupported_type": "لا يمكن إرسال هذا النوع من الملفات. يمكن إرسال الصور وملفات PDF والملفات النصية.",
    "attach.error.corrupt_image": "تعذّرت قراءة هذه الصورة.",
    "attach.error.too_many_pixels": "هذه الصورة كبيرة جدًا.",
    "attach.error.too_many_frames": "هذه الصورة المتحركة طويلة جدًا.",
    "attach.error.infected": "رفض فاحص الفيروسات هذا الملف.",
    "attach.error.rate_limited": "عمليات رفع كثيرة جدًا. يرجى الانتظار قليلًا.",
    "attach.error.quota_exceeded": "لقد رفعت ملفات كثيرة اليوم.",
    "attach.error.other": "تعذّر رفع الملف. يرجى المحاولة مرة أخرى.",
  },
};

/** Languages written right to left. */
export const RTL = new Set(["ar"]);

/** The catalog language for a list of BCP 47 tags ("zh-CN" -> "zh-Hans"), or null. */
export function matchLanguage(tags) {
  for (const tag of tags || []) {
    const t = String(tag || "").toLowerCase();
    if (t === "en" || t.startsWith("en-")) return "en";
    if (t === "zh" || t.startsWith("zh-hans") || t === "zh-cn" || t === "zh-sg") return "zh-Hans";
    if (t === "ar" || t.startsWith("ar-")) return "ar";
  }
  return null;
}

/** The catalog language for a list of BCP 47 tags, English when none fits. */
export function pickLanguage(tags) {
  return matchLanguage(tags) || "en";
}

function pageLanguage(explicit) {
  const asked = globalThis.location ? new URLSearchParams(globalThis.location.search).get("lang") : null;
  const nav = globalThis.navigator || {};
  return pickLanguage([explicit, asked, ...(nav.languages || [nav.language])].filter(Boolean));
}

/** The page's language (a catalog name: en, zh-Hans, ar). */
export let LANG = pageLanguage(null);

/** Use `explicit` (the widget's data-lang) when we have it, else the page's language. */
export function setLanguage(explicit) {
  LANG = pageLanguage(explicit);
  return LANG;
}

/** "rtl" or "ltr" for the page's language. */
export function dir() {
  return RTL.has(LANG) ? "rtl" : "ltr";
}

/** The language tag for Intl formatting and the lang attribute. */
export function langTag() {
  return LANG;
}

/** The text of `key` in the page's language, {placeholders} filled from `vars`. */
export function t(key, vars) {
  const text = (CATALOGS[LANG] && CATALOGS[LANG][key]) || CATALOGS.en[key] || key;
  if (!vars) return text;
  return text.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined || vars[k] === null ? m : String(vars[k])));
}

const UPLOAD_ERRORS = {
  too_large: "attach.error.too_large",
  unsupported_type: "attach.error.unsupported_type",
  corrupt_image: "attach.error.corrupt_image",
  too_many_pixels: "attach.error.too_many_pixels",
  too_many_frames: "attach.error.too_many_frames",
  infected: "attach.error.infected",
  rate_limited: "attach.error.rate_limited",
  quota_exceeded: "attach.error.quota_exceeded",
};

/** The catalog key of an upload error code (the server's error.code). */
export function uploadErrorKey(code) {
  return UPLOAD_ERRORS[code] || "attach.error.other";
}

/** Put a translated text into an element, marking its language for screen readers. */
export function setText(node, key, vars) {
  node.textContent = t(key, vars);
  node.lang = LANG;
}

/** Translate a static page: [data-i18n] gets its text, [data-i18n-ATTR] its attribute ATTR. */
export function translatePage(root) {
  for (const node of root.querySelectorAll("*")) {
    for (const a of [...node.attributes]) {
      if (a.name === "data-i18n") node.textContent = t(a.value);
      else if (a.name.startsWith("data-i18n-")) node.setAttribute(a.name.slice(10), t(a.value));
    }
  }
}

const sameDay = (a, b) => a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();

/** A message time (unix seconds): the time today, else date and time (Intl, the page's language). */
export function formatTime(ts, nowMs = Date.now()) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const opts = sameDay(d, new Date(nowMs)) ? { hour: "2-digit", minute: "2-digit" }
    : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  if (d.getFullYear() !== new Date(nowMs).getFullYear()) opts.year = "numeric";
  return new Intl.DateTimeFormat(LANG, opts).format(d);
}

/** A full date and time (for tooltips and the profile panel). */
export function formatDateTime(ts) {
  if (!ts) return "";
  return new Intl.DateTimeFormat(LANG, { dateStyle: "medium", timeStyle: "short" }).format(new Date(ts * 1000));
}

/** When agents are back (after hours): weekday and time, in the viewer's time zone. */
export function formatWhen(ts) {
  if (!ts) return "";
  return new Intl.DateTimeFormat(LANG, { weekday: "long", hour: "2-digit", minute: "2-digit" }).format(new Date(ts * 1000));
}

/** Seconds -> "3 min", "1 h 5 min" in the page's language. */
export function formatDuration(sec) {
  sec = Math.max(0, Math.floor(sec));
  const n = (x) => new Intl.NumberFormat(LANG).format(x);
  if (sec < 60) return t("time.s", { n: n(sec) });
  const m = Math.floor(sec / 60);
  if (m < 60) return t("time.min", { n: n(m) });
  return t("time.h", { h: n(Math.floor(m / 60)), m: n(m % 60) });
}
