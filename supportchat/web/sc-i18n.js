// Message catalogs of the web UI: English and Simplified Chinese. A page
// shows the first of the browser's languages it has (navigator.languages;
// ?lang=en or ?lang=zh-Hans overrides), English otherwise. Every string a
// page shows through t() must be in both catalogs (tests/test_i18n.py checks
// that the keys match and that every key the pages use is there).

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
    "attach.error.too_large": "This file is too large.",
    "attach.error.unsupported_type": "This type of file cannot be sent. Images, PDF and text files can.",
    "attach.error.corrupt_image": "This image could not be read.",
    "attach.error.too_many_pixels": "This image is too large.",
    "attach.error.too_many_frames": "This animation is too long.",
    "attach.error.infected": "This file was refused by the virus scanner.",
    "attach.error.rate_limited": "Too many uploads. Please wait a moment.",
    "attach.error.quota_exceeded": "You have uploaded too much today.",
    "attach.error.other": "The file could not be uploaded. Please try again.",
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
    "attach.error.too_large": "文件太大。",
    "attach.error.unsupported_type": "无法发送此类型的文件。可以发送图片、PDF 和文本文件。",
    "attach.error.corrupt_image": "无法读取此图片。",
    "attach.error.too_many_pixels": "图片尺寸太大。",
    "attach.error.too_many_frames": "动画太长。",
    "attach.error.infected": "病毒扫描拒绝了此文件。",
    "attach.error.rate_limited": "上传过于频繁，请稍候。",
    "attach.error.quota_exceeded": "您今天上传的文件已达上限。",
    "attach.error.other": "文件上传失败，请重试。",
  },
};

/** The catalog language for a list of BCP 47 tags ("zh-CN" -> "zh-Hans"). */
export function pickLanguage(tags) {
  for (const tag of tags || []) {
    const t = String(tag).toLowerCase();
    if (t === "en" || t.startsWith("en-")) return "en";
    if (t === "zh" || t.startsWith("zh-hans") || t === "zh-cn" || t === "zh-sg") return "zh-Hans";
  }
  return "en";
}

function pageLanguage() {
  const asked = globalThis.location ? new URLSearchParams(globalThis.location.search).get("lang") : null;
  const nav = globalThis.navigator || {};
  return pickLanguage([asked, ...(nav.languages || [nav.language])].filter(Boolean));
}

export const LANG = pageLanguage();

/** The text of `key` in the page's language. */
export function t(key) {
  return (CATALOGS[LANG] && CATALOGS[LANG][key]) || CATALOGS.en[key] || key;
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
export function setText(node, key) {
  node.textContent = t(key);
  node.lang = LANG;
}
