//! HTML written by hand, escaped by default. [`html!`] writes its format string as markup and
//! every argument as text, escaped, except a [`Markup`], which is markup already; names
//! captured in the format string (`{name}`) are refused at compile time, since they would
//! bypass the escaping. Plus the few ways the pages show times, durations and states.

use serde::Serialize;
use shoal_shared::Timestamp;
use std::fmt;

/// Markup: text that is HTML already (built by [`html!`] from escaped arguments).
#[derive(Debug, Default, Clone)]
pub struct Markup(String);

impl Markup {
    pub fn new() -> Markup {
        Markup(String::new())
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends `other`.
    pub fn push(&mut self, other: &Markup) {
        self.0.push_str(&other.0);
    }

    /// Writes `args` as they are: only [`html!`] calls this, with every argument escaped.
    #[doc(hidden)]
    pub fn write_markup(&mut self, args: fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = fmt::Write::write_fmt(&mut self.0, args);
    }
}

/// What an argument of [`html!`] writes: text escaped, markup as it is.
pub trait Render {
    /// Writes `self` into an HTML document.
    ///
    /// # Errors
    /// Only the formatter's.
    fn render(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: fmt::Display + ?Sized> Render for T {
    fn render(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_string();
        f.write_str(&escape(&text))
    }
}

impl Render for Markup {
    fn render(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An argument of [`html!`].
#[doc(hidden)]
pub struct Arg<'a, T: Render + ?Sized>(pub &'a T);

impl<T: Render + ?Sized> fmt::Display for Arg<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.render(f)
    }
}

/// `text` escaped for an element's content or a quoted attribute's value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether a format string uses only positional arguments (`{}`, `{0}`, `{:>4}`), never a
/// captured name (`{name}`), which [`html!`] could not escape.
#[doc(hidden)]
pub const fn positional_only(fmt: &str) -> bool {
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            if i + 1 < b.len() && b[i + 1] == b'{' {
                i += 2;
                continue;
            }
            if i + 1 < b.len() && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_') {
                return false;
            }
        }
        i += 1;
    }
    true
}

/// Appends to a [`Markup`]: `html!(out, "<td class=\"{}\">{}</td>", class, text)`. The
/// format string is markup; each argument is escaped unless it is a [`Markup`].
macro_rules! html {
    ($out:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        const _: () = assert!(
            $crate::dashboard::html::positional_only($fmt),
            "html!: pass every value as a positional argument, never as a name captured in the format string"
        );
        $out.write_markup(format_args!($fmt $(, $crate::dashboard::html::Arg(&$arg))*));
    }};
}
pub(crate) use html;

/// A new [`Markup`] made by [`html!`].
macro_rules! markup {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        let mut m = $crate::dashboard::html::Markup::new();
        $crate::dashboard::html::html!(m, $fmt $(, $arg)*);
        m
    }};
}
pub(crate) use markup;

/// The API's name of a value (`running`, `target_default`): its JSON string.
pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// The API's name of a value for people: `target_default` → `target default`.
pub fn label_of<T: Serialize>(value: &T) -> String {
    name_of(value).replace('_', " ")
}

/// A state as a badge: its name as text (never colour alone) and a class per state.
pub fn badge<T: Serialize>(state: &T) -> Markup {
    let name = name_of(state);
    markup!(
        "<span class=\"badge s-{}\" data-state=\"{}\">{}</span>",
        name,
        name,
        name.replace('_', " ")
    )
}

/// A time as `2026-11-27 18:43:39Z`, in a `<time>` element with the full RFC 3339 text.
pub fn time(t: Timestamp) -> Markup {
    let full = t.to_rfc3339();
    let short = format!("{}Z", full.get(..19).unwrap_or(&full).replace('T', " "));
    markup!("<time datetime=\"{}\">{}</time>", full, short)
}

/// An optional time; a dash when there is none.
pub fn time_or_dash(t: Option<Timestamp>) -> Markup {
    t.map_or_else(dash, time)
}

/// How long ago `t` was at `now`, with the time itself as a tooltip: `12 s ago`.
pub fn ago(t: Timestamp, now: Timestamp) -> Markup {
    let full = t.to_rfc3339();
    markup!(
        "<time datetime=\"{}\" title=\"{}\">{} ago</time>",
        full,
        full,
        duration_ms(now.millis_since(t))
    )
}

/// A duration for people: `850 ms`, `6.2 s`, `3 min 4 s`, `2 h 5 min`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `—`: nothing to show.
pub fn dash() -> Markup {
    markup!("<span class=\"none\" aria-label=\"none\">—</span>")
}

/// An optional value as text, or a dash.
pub fn or_dash<T: fmt::Display>(value: Option<T>) -> Markup {
    value.map_or_else(dash, |v| markup!("{}", v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_escaped_and_markup_is_not() {
        let evil = "<script>alert('x')</script>&\"";
        let inner = markup!("<b>{}</b>", evil);
        let outer = markup!("<p title=\"{}\">{}</p>", evil, inner);
        assert_eq!(
            outer.into_string(),
            "<p title=\"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\"><b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;</b></p>"
        );
    }

    #[test]
    fn only_positional_format_strings_pass() {
        assert!(positional_only("<a href=\"{}\">{0}{:>4}{{name}}</a>"));
        assert!(!positional_only("<a>{name}</a>"));
        assert!(!positional_only("{_x}"));
    }

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        let t = Timestamp(1_795_000_000_123);
        assert_eq!(
            time(t).into_string(),
            "<time datetime=\"2026-11-18T11:06:40.123Z\">2026-11-18 11:06:40Z</time>"
        );
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(6_240), "6.2 s");
        assert_eq!(duration_ms(184_000), "3 min 4 s");
        assert_eq!(duration_ms(7_500_000), "2 h 5 min");
        assert_eq!(
            badge(&shoal_shared::TaskState::RetryScheduled).into_string(),
            "<span class=\"badge s-retry_scheduled\" data-state=\"retry_scheduled\">retry scheduled</span>"
        );
    }
}
