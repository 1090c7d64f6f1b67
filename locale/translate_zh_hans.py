"""Fills locale/zh_Hans/LC_MESSAGES/django.po from the table below and compiles the .mo.

Run after `manage.py makemessages -l zh_Hans` (see the README, "Translations"); an msgid with no
entry here stays untranslated and the test suite says which.
"""
from pathlib import Path

import polib

ZH_HANS = {
    "%(limit)d answers are being written for you already. Wait for one to finish, or stop one.":
        "已有 %(limit)d 个回答正在为你生成。请等待其中一个完成，或停止一个。",
    "You are sending messages too fast (at most %(limit)d a minute). Try again in %(seconds)d s.":
        "你发送消息过快（每分钟最多 %(limit)d 条）。请在 %(seconds)d 秒后重试。",
    "The upload could not be read. Send one image per request, with a file name of ordinary length.":
        "无法读取此上传。每次请求发送一张图片，且文件名长度应正常。",
    "The text contains a NUL character, which cannot be stored.": "文本包含无法保存的 NUL 字符。",
    "Model": "模型",
    "System prompt": "系统提示词",
    "Temperature": "温度",
    "Top p": "Top p",
    "Max tokens": "最大 token 数",
    "%(model)s writes at most %(limit)d tokens per answer.": "%(model)s 每个回答最多生成 %(limit)d 个 token。",
    "You": "你",
    "Assistant": "助手",
    "Thinking": "思考中",
    "Thought": "思考过程",
    "Stopped.": "已停止。",
    "This answer failed.": "此回答生成失败。",
    "This answer was withheld by the content filter.": "此回答已被内容过滤器拦截。",
    "Copy": "复制",
    "Copied": "已复制",
    "Copy code": "复制代码",
    "Regenerate": "重新生成",
    "Edit": "编辑",
    "Save & send": "保存并发送",
    "Cancel": "取消",
    "Previous version": "上一个版本",
    "Next version": "下一个版本",
    "Version": "版本",
    "Not connected; reconnecting…": "未连接，正在重新连接…",
    "Offline — reconnecting in %(seconds)s s…": "已离线 — %(seconds)s 秒后重新连接…",
    "This conversation is not available.": "此对话不可用。",
    "Rename": "重命名",
    "Could not rename the conversation.": "无法重命名此对话。",
    "Conversation title": "对话标题",
    "Edit your message": "编辑你的消息",
    "Theme: system": "主题：跟随系统",
    "Theme: dark": "主题：深色",
    "Theme: light": "主题：浅色",
    "Today": "今天",
    "Yesterday": "昨天",
    "Earlier": "更早",
    "The conversation was deleted.": "对话已删除。",
    "Settings saved.": "设置已保存。",
    "Choose a JSON file exported from deepseek-web.": "请选择从 deepseek-web 导出的 JSON 文件。",
    "The file is too large to import.": "文件太大，无法导入。",
    "Skip to the message box": "跳到消息输入框",
    "Conversations": "对话",
    "Model for the new chat": "新对话使用的模型",
    "New chat": "新对话",
    "Close the conversation list": "关闭对话列表",
    "Search conversations": "搜索对话",
    "Search titles and messages": "搜索标题和消息",
    "Search": "搜索",
    "Results for “%(query)s”": "“%(query)s”的搜索结果",
    "Clear": "清除",
    "Delete": "删除",
    "No conversation matches.": "没有匹配的对话。",
    "No conversations yet.": "还没有对话。",
    "Import a conversation (JSON export)": "导入对话（JSON 导出文件）",
    "Import": "导入",
    "Theme": "主题",
    "Log out": "退出登录",
    "Open the conversation list": "打开对话列表",
    "Demo model in use.": "正在使用演示模型。",
    "“%(name)s” has random weights, so its answers are noise — every part of the path (tokenizer, chat template, "
    "streaming) is real. To serve a real model, set <code>DEEPSEEK_MODELS</code> to a Hugging Face id or local "
    "path (see the README).":
        "“%(name)s”的权重是随机的，所以它的回答是噪声——但整条链路（分词器、对话模板、流式输出）都是真实的。"
        "要使用真实模型，请把 <code>DEEPSEEK_MODELS</code> 设为 Hugging Face 模型 ID 或本地路径（见 README）。",
    "Conversation actions": "对话操作",
    "Export Markdown": "导出 Markdown",
    "Export JSON": "导出 JSON",
    "Settings": "设置",
    "Leave a number empty to use the model's default.": "数值留空则使用模型的默认值。",
    "Save settings": "保存设置",
    "Messages": "消息",
    "Message": "消息",
    "Message %(name)s (Enter to send, Shift+Enter for a new line)":
        "给 %(name)s 发消息（Enter 发送，Shift+Enter 换行）",
    "Send": "发送",
    "Stop": "停止",
    "What can I help with?": "有什么可以帮你的？",
    "Start a new chat": "开始新对话",
    "Delete this conversation?": "删除此对话？",
    "Its messages and uploads are deleted too. This cannot be undone.":
        "其中的消息和上传的文件也会被删除，且无法恢复。",
    "Language": "语言",
    "Apply": "应用",
    "Log in": "登录",
    "Your username and password didn't match. Please try again.": "用户名或密码不正确，请重试。",
    "Username": "用户名",
    "Password": "密码",
    "No account yet?": "还没有账号？",
    "Sign up": "注册",
    "Create an account": "创建账号",
    "Already have an account?": "已有账号？",
    # Errors the server sends (socket frames, forms).
    "conversation": "对话",
    "message": "消息",
    "The %(what)s id is not valid.": "%(what)s ID 无效。",
    "No such conversation.": "没有这个对话。",
    "No such message.": "没有这条消息。",
    "No model named “%(model)s” is configured.": "没有配置名为“%(model)s”的模型。",
    "content must be a string.": "content 必须是字符串。",
    "The message is empty.": "消息为空。",
    "The message contains a NUL character, which cannot be stored.": "消息包含无法保存的 NUL 字符。",
    "The message contains characters that are not valid Unicode.": "消息包含无效的 Unicode 字符。",
    "The message is %(length)d characters long; the limit is %(limit)d.":
        "消息长 %(length)d 个字符，上限为 %(limit)d。",
    "The message is %(tokens)d tokens long; %(model)s can take at most %(room)d with room for its answer.":
        "消息长 %(tokens)d 个 token；在为回答留出空间后，%(model)s 最多只能接受 %(room)d 个。",
    "An answer is still being written. Stop it or wait for it to finish.": "回答仍在生成中。请先停止它或等待它完成。",
    "The model “%(model)s” is no longer configured.": "模型“%(model)s”已不再配置。",
    "No such message to edit.": "没有可编辑的这条消息。",
    "No such answer to regenerate.": "没有可重新生成的这个回答。",
    "The title must be text.": "标题必须是文本。",
    "The title is empty.": "标题为空。",
    "The title contains a NUL character or text that is not valid Unicode.": "标题包含 NUL 字符或无效的 Unicode 文本。",
    "The title is %(length)d characters long; the limit is %(limit)d.": "标题长 %(length)d 个字符，上限为 %(limit)d。",
    "That answer is not being written.": "这个回答没有在生成中。",
    "Unknown frame type “%(type)s”.": "未知的帧类型“%(type)s”。",
    "Something went wrong on the server; try again.": "服务器出错了，请重试。",
    "Too many frames; slow down.": "发送过于频繁，请放慢速度。",
    "Frames must be JSON text.": "帧必须是 JSON 文本。",
    "The frame is too large.": "帧太大。",
    "The frame is not valid JSON.": "帧不是有效的 JSON。",
    "A frame must be a JSON object with a “type”.": "帧必须是带有“type”字段的 JSON 对象。",
    "client_id must be a string of at most %(limit)d characters.": "client_id 必须是最多 %(limit)d 个字符的字符串。",
    "attachments must be a list of ids.": "attachments 必须是 ID 列表。",
    "Image attachments are not supported yet.": "暂不支持图片附件。",
    "after_seq must be a non-negative integer.": "after_seq 必须是非负整数。",
    "The file could not be imported: %(reason)s": "无法导入该文件：%(reason)s",
    # Images.
    "%(model)s cannot see images. Pick a model that can in Settings, or send the message without them.":
        "%(model)s 无法识别图片。请在设置中换一个能识别图片的模型，或者不带图片发送消息。",
    "Choose an image to attach.": "请选择要附加的图片。",
    "The image is %(size)d bytes; the limit is %(limit)d.": "图片大小为 %(size)d 字节，上限为 %(limit)d。",
    "The file is empty.": "文件是空的。",
    "The file is %(size)s; images can be at most %(limit)s.": "文件大小为 %(size)s，图片最大为 %(limit)s。",
    "The image has too many pixels to open safely; the limit is %(limit)s pixels.":
        "图片像素太多，无法安全打开；上限为 %(limit)s 像素。",
    "The animation has more than %(limit)s frames; the limit is %(limit)s.":
        "动画超过 %(limit)s 帧；上限为 %(limit)s 帧。",
    "The file is not a PNG, JPEG, WebP or GIF image.": "该文件不是 PNG、JPEG、WebP 或 GIF 图片。",
    "The image is %(width)s × %(height)s pixels; the limit is %(limit)s pixels on a side.":
        "图片为 %(width)s × %(height)s 像素；每边上限为 %(limit)s 像素。",
    "The image is %(width)s × %(height)s = %(pixels)s pixels; the limit is %(limit)s pixels.":
        "图片为 %(width)s × %(height)s = %(pixels)s 像素；上限为 %(limit)s 像素。",
    "The image is damaged or truncated.": "图片已损坏或不完整。",
    "%(size)s bytes": "%(size)s 字节",
    "Attached image": "附加的图片",
    "Remove this image": "移除这张图片",
    "The image could not be uploaded.": "图片上传失败。",
    "Only PNG, JPEG, WebP and GIF images can be attached.": "只能附加 PNG、JPEG、WebP 和 GIF 图片。",
    "Wait until the images are uploaded.": "请等待图片上传完成。",
    "You have stored %(count)d images, the most allowed. Delete some conversations to make room.":
        "你已存储 %(count)d 张图片，已达上限。请删除一些对话以腾出空间。",
    "Your images would take more than the %(limit)d MB allowed. Delete some conversations to make room.":
        "你的图片将超过允许的 %(limit)d MB。请删除一些对话以腾出空间。",
    "No such image.": "没有这张图片。",
    "A message can carry at most %(limit)d images.": "一条消息最多可以附带 %(limit)d 张图片。",
    "image": "图片",
    "Images for the next message": "下一条消息的图片",
    "Attach images": "附加图片",
    "Attach images (or drop or paste them)": "附加图片（也可以拖放或粘贴）",
    # API content parts.
    "An image data: URL must be base64-encoded (data:image/png;base64,…).":
        "图片 data: URL 必须是 base64 编码（data:image/png;base64,…）。",
    "The image is larger than the %(limit)d bytes allowed.": "图片超过允许的 %(limit)d 字节。",
    "The image data: URL is not valid base64.": "图片 data: URL 不是有效的 base64。",
    "content must be a string or a list of parts.": "content 必须是字符串或由多个部分组成的列表。",
    "Part %(index)d: image_url.url must be a string.": "第 %(index)d 部分：image_url.url 必须是字符串。",
    "Part %(index)d must be a text or an image_url part.": "第 %(index)d 部分必须是 text 或 image_url 类型。",
    # Audit log and moderation (the admin, the notice).
    "Notes": "备注",
    "Model call": "模型调用",
    "Sign-up": "注册",
    "Login": "登录",
    "Failed login": "登录失败",
    "Logout": "退出登录",
    "Password change": "修改密码",
    "API key created": "创建 API 密钥",
    "API key revoked": "吊销 API 密钥",
    "API key rejected": "拒绝 API 密钥",
    "Conversation deleted": "删除对话",
    "Conversation exported": "导出对话",
    "Upload rejected": "拒绝上传",
    "Moderation block": "审核拦截",
    "Admin change": "管理后台变更",
    "HTTP request": "HTTP 请求",
    "audit event": "审计事件",
    "The pattern is empty.": "规则内容为空。",
    "This regular expression does not compile: %(error)s": "此正则表达式无法编译：%(error)s",
    "Keyword": "关键词",
    "Regular expression": "正则表达式",
    "Violence": "暴力",
    "Self-harm": "自我伤害",
    "Child safety": "儿童安全",
    "Credentials": "凭据",
    "Personal data": "个人数据",
    "Custom": "自定义",
    "User input": "用户输入",
    "Model output": "模型输出",
    "Both": "两者",
    "moderation rule": "审核规则",
    "This content was withheld by the content filter.": "此内容已被内容过滤器拦截。",
    "Unknown rule kind “%(kind)s”.": "未知的规则类型“%(kind)s”。",
    "A keyword can be at most %(limit)d characters long.": "关键词最长为 %(limit)d 个字符。",
    "This regular expression matches empty text, so it would block everything.":
        "此正则表达式会匹配空文本，因此会拦截所有内容。",
    "Nested repetition such as (a+)+ can take exponential time; use a possessive quantifier (a++) or an atomic "
    "group (?>…) inside.": "(a+)+ 这样的嵌套重复可能耗费指数级时间；请在内部使用占有量词 (a++) 或原子组 (?>…)。",
    "Chain BROKEN at event %(id)s: %(reason)s": "哈希链在事件 %(id)s 处断开：%(reason)s",
    "Export CSV": "导出 CSV",
    "Not sent": "未发送",
    "Back to your conversations": "返回你的对话",
    # API keys.
    "A key name is text of at most %(limit)d characters.": "密钥名称最多 %(limit)d 个字符。",
    "No such key.": "没有这个密钥。",
    "You have used your %(limit)d tokens for today; the quota renews at 00:00 UTC.":
        "你今天的 %(limit)d 个 token 已用完；额度在 UTC 00:00 重置。",
    "More than %(limit)d requests in a minute; wait and retry.": "一分钟内的请求超过 %(limit)d 个；请稍后重试。",
    "%(limit)d requests are already running for you; wait for one to finish.":
        "你已有 %(limit)d 个请求正在运行；请等其中一个完成。",
    # The API keys page.
    "API keys": "API 密钥",
    "Skip to the content": "跳到正文",
    "Programs use a key to call this site's models through its OpenAI-compatible API. Treat a key like a "
    "password: anyone who has it can use your quota.":
        "程序用密钥通过本站兼容 OpenAI 的 API 调用模型。请像对待密码一样保管密钥：任何拿到它的人都能使用你的额度。",
    "Your new key": "你的新密钥",
    "Copy it now: it will not be shown again.": "请立即复制：它不会再次显示。",
    "Only a fingerprint of it is stored, so nobody can show it to you later; if you lose it, create another one "
    "and revoke this one.": "系统只保存它的指纹，之后谁也无法再把它显示给你；如果丢失，请新建一个并吊销这个。",
    "Create a key": "创建密钥",
    "Name (optional)": "名称（可选）",
    "e.g. laptop, nightly job": "例如：笔记本、夜间任务",
    "Create key": "创建密钥",
    "Your keys": "你的密钥",
    "Unnamed key": "未命名密钥",
    "Key": "密钥",
    "Created": "创建于",
    "Last used": "最近使用",
    "never": "从未使用",
    "State": "状态",
    "revoked on": "已吊销于",
    "active": "有效",
    "Revoke": "吊销",
    "You have no keys yet.": "你还没有密钥。",
    "Limits and today's use": "限额与今日用量",
    "no limit": "不限",
    "Requests today": "今日请求数",
    "Tokens today": "今日 token 数",
    "%(used)s of %(limit)s": "%(used)s / %(limit)s",
    "prompt %(prompt)s + completion %(completion)s": "提示 %(prompt)s + 补全 %(completion)s",
    "Requests running now": "正在运行的请求",
    "%(running)s of %(limit)s at a time": "%(running)s / 最多同时 %(limit)s 个",
    "Requests per minute": "每分钟请求数",
    "Tokens used of today's quota": "今日 token 额度已用部分",
    "Today's counts start again at 00:00 UTC.": "今日计数在 UTC 00:00 重新开始。",
    "How to use a key": "如何使用密钥",
    "The API speaks OpenAI's wire format, so the official openai package and DeepSeek's examples work when "
    "pointed at this base URL:":
        "此 API 使用 OpenAI 的接口格式，因此官方 openai 包和 DeepSeek 的示例只需指向这个基础 URL 即可使用：",
    "base URL": "基础 URL",
    "The examples read the key from the environment variable <code>DEEPSEEK_API_KEY</code>.":
        "示例从环境变量 <code>DEEPSEEK_API_KEY</code> 读取密钥。",
    "Python (the openai package)": "Python（openai 包）",
    "The key %(prefix)s… was revoked; requests with it are refused from now on.":
        "密钥 %(prefix)s… 已吊销；从现在起使用它的请求都会被拒绝。",
    "Could not copy; the text is selected, so press Ctrl+C.": "无法复制；文本已选中，请按 Ctrl+C。",
    "Login locked out": "登录已锁定",
    # Database outages and sign-up floods (chat/outage.py, chat/signups.py).
    "The database is unavailable right now. Try again in a few seconds.": "数据库暂时无法访问。请过几秒再试。",
    "Too many accounts were created from your network in the last hour. Try again later.":
        "过去一小时内从你的网络创建的账户过多。请稍后再试。",
    "Temporarily unavailable": "暂时无法使用",
    "The site cannot reach its database right now. Please try again in %(seconds)s seconds.":
        "网站暂时无法连接数据库。请在 %(seconds)s 秒后重试。",
    "Try again": "重试",
}

# Entries with plural forms (Chinese has one form).
ZH_HANS_PLURAL = {
    "Chain OK — the newest %(counter)s event (run manage.py verify_audit_chain to check them all)":
        "哈希链正常 — 最新的 %(counter)s 个事件（运行 manage.py verify_audit_chain 检查全部）",
    "Chain OK — %(counter)s event": "哈希链正常 — %(counter)s 个事件",
    "Too many failed sign-in attempts. Try again in %(minutes)d minute.":
        "登录失败次数过多。请在 %(minutes)d 分钟后重试。",
}

if __name__ == "__main__":
    folder = Path(__file__).resolve().parent / "zh_Hans" / "LC_MESSAGES"
    catalogue = polib.pofile(str(folder / "django.po"))
    missing = []
    for entry in catalogue:
        if entry.msgid_plural and entry.msgid in ZH_HANS_PLURAL:
            entry.msgstr_plural = {0: ZH_HANS_PLURAL[entry.msgid]}
            if "fuzzy" in entry.flags:
                entry.flags.remove("fuzzy")
        elif entry.msgid_plural:
            entry.msgstr_plural = {0: ""}
            missing.append(entry.msgid)
        elif entry.msgid in ZH_HANS:
            entry.msgstr = ZH_HANS[entry.msgid]
            if "fuzzy" in entry.flags:
                entry.flags.remove("fuzzy")
        elif not entry.msgstr or "fuzzy" in entry.flags:  # a guess by msgmerge is not a translation
            entry.msgstr = ""
            missing.append(entry.msgid)
    catalogue.metadata["Language"] = "zh_Hans"
    catalogue.metadata["Content-Type"] = "text/plain; charset=UTF-8"
    catalogue.save()
    catalogue.save_as_mofile(str(folder / "django.mo"))
    print(f"{len(catalogue) - len(missing)} translated, {len(missing)} missing", *missing, sep="\n")
