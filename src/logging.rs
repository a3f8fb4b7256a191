//! The text log's safety: request content reaches log fields (serde's "unknown field" messages
//! echo a field's name, errors quote values, paths and headers are logged), so every field
//! value is written with its control characters escaped. A forged line break, carriage
//! return or terminal escape sequence then shows as `\n`, `\r`, `\u{1b}` and cannot start a
//! line or rewrite one. Colours are only written to a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::config::names::is_unsafe_char;

/// `text` with every control, line-separator and bidirectional-formatting character written
/// as a Rust escape (`\n`, `\r`, `\t`, `\u{1b}`), so it stays on one line and shows as sent.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether the text log may use colours: only on a terminal, and not when `NO_COLOR` is set
/// (<https://no-color.org>). A log file or pipe never gets escape sequences.
pub fn ansi_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The text format's field writer: `name=value` pairs separated by spaces, the message bare,
/// every value [escaped](escape).
pub fn escaping_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w: &mut Writer<'_>, field, value| {
        let text = format!("{value:?}");
        let text = escape(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escape_leaves_plain_text_and_escapes_controls() {
        assert!(matches!(escape("plain é 😀"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\nb\rc\u{1b}[2K\u{9b}\u{202e}\0"),
            "a\\nb\\rc\\u{1b}[2K\\u{9b}\\u{202e}\\u{0}"
        );
    }

    #[test]
    fn hostile_field_values_and_messages_stay_on_one_line() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaping_fields())
            .with_writer(move || sink.clone())
            .finish();
        let forged = "x\u{1b}[2K\r\n2026-01-01T00:00:00Z  INFO sever: FAKE";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(error = %forged, path = forged, "refused {forged}");
        });
        let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'));
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
        assert!(out.contains("error=x\\u{1b}[2K\\r\\n2026"), "{out:?}");
        assert!(out.contains("refused x\\u{1b}"), "{out:?}");
    }
}
