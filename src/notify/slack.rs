//! Slack incoming webhooks: Block Kit (a header, a section of fields, a context line) with a
//! `text` fallback for notifications and clients without blocks. Every string from outside
//! is escaped the way Slack asks (`&`, `<`, `>`), so a login or application name such as
//! `<!channel>` or `<http://evil|x>` shows as typed and mentions nobody, links nowhere; and
//! it is set in code, with backticks taken out, so it cannot format the message either.

use serde_json::{Value, json};

use super::content::{Digest, plain};

/// Slack's limits: a header's text and a section's text.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;

/// `text` escaped for Slack's `mrkdwn`, and for its control sequences in plain text too.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in plain(text).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Would end the code span it is set in.
            '`' => out.push('\''),
            c => out.push(c),
        }
    }
    out
}

/// A value as inline code: shown as typed, formatted as nothing.
fn code(value: &str) -> String {
    format!("`{}`", escape(value))
}

fn cut(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The message body.
pub fn body(digest: &Digest) -> Value {
    let title = format!("sever: {}", digest.title());
    let fields = digest.fields();
    let line = |label: &str, values: &[String]| {
        let shown: Vec<String> = values.iter().map(|v| code(v)).collect();
        format!("*{label}:* {}", shown.join(", "))
    };
    let section: Vec<String> = fields
        .iter()
        .filter(|(label, _)| *label != "Actions")
        .map(|(label, values)| line(label, values))
        .collect();
    // The fallback: the title and the first fields, escaped the same way.
    let fallback: Vec<String> = fields
        .iter()
        .filter(|(label, _)| matches!(*label, "Targets" | "Logins" | "Counts" | "Reason"))
        .map(|(label, values)| {
            let values: Vec<String> = values.iter().map(|v| escape(v)).collect();
            format!("{}: {}", label.to_lowercase(), values.join(", "))
        })
        .collect();
    let mut text = escape(&title);
    if !fallback.is_empty() {
        text = format!("{text}: {}", fallback.join("; "));
    }
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": cut(title, HEADER_MAX), "emoji": false},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(section.join("\n"), SECTION_MAX)},
        }),
    ];
    let mut context = format!("severity: {}", digest.severity.as_str());
    if let Some((_, ids)) = fields.iter().find(|(label, _)| *label == "Actions") {
        context = format!("{context} · {}", line("Actions", ids));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": cut(context, SECTION_MAX)}],
    }));
    json!({"text": cut(text, SECTION_MAX), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Event, Notice};

    #[test]
    fn mentions_links_and_formatting_from_outside_are_escaped() {
        let notice = Notice {
            event: Some(Event::ActionCompleted),
            targets: vec!["main".into()],
            logins: vec!["<!channel>".into(), "a`b*c".into()],
            application_names: vec!["<http://evil.example|click> & <@U123>".into()],
            counts: [("terminated".to_owned(), 2)].into(),
            ..Default::default()
        };
        let include = [crate::config::Include::ApplicationNames].into();
        let digest = Digest::of(&notice, Event::ActionCompleted, &include);
        let body = body(&digest);
        let all = body.to_string();
        for raw in ["<!channel>", "<http://evil", "<@U123>", "a`b"] {
            assert!(!all.contains(raw), "{raw} in {all}");
        }
        let section = body["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(section.contains("`&lt;!channel&gt;`"), "{section}");
        assert!(
            section.contains("`&lt;http://evil.example|click&gt; &amp; &lt;@U123&gt;`"),
            "{section}"
        );
        assert!(section.contains("`a'b*c`"), "{section}");
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("sever: Action completed"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert_eq!(body["blocks"][0]["type"], "header");
    }
}
