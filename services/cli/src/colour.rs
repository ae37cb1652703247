//! When the CLI colours its output, and how a state word is coloured: only on a terminal,
//! and never when `NO_COLOR` is set to anything but the empty string (<https://no-color.org>).
//! Tables (comfy-table cells) and plain lines (ANSI codes) take their colours from here.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

/// Whether to colour output going to a terminal (`is_terminal`) given `NO_COLOR`'s value.
pub fn enabled(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Whether to colour what goes to stdout now.
pub fn stdout() -> bool {
    enabled(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// What a state word tells at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Done well: succeeded, healthy, online.
    Good,
    /// Failed or down.
    Bad,
    /// Under way, or fine with a warning.
    Busy,
    /// Ended without running: cancelled, skipped, left.
    Quiet,
}

/// The tone of a state as the API spells it (`None`: printed as it is).
pub fn tone(state: &str) -> Option<Tone> {
    Some(match state {
        "succeeded" | "healthy" | "online" => Tone::Good,
        "failed" | "unhealthy" | "offline" | "unavailable" | "timed_out" | "lost" => Tone::Bad,
        "queued"
        | "running"
        | "dispatched"
        | "planned"
        | "cancelling"
        | "draining"
        | "retry_scheduled"
        | "healthy_with_warnings" => Tone::Busy,
        "cancelled" | "skipped" | "left" => Tone::Quiet,
        _ => return None,
    })
}

/// `state` with the ANSI colour of its tone when `on` (for lines that are not tables).
pub fn paint(state: &str, on: bool) -> String {
    let code = match (on, tone(state)) {
        (true, Some(Tone::Good)) => "32",
        (true, Some(Tone::Bad)) => "31",
        (true, Some(Tone::Busy)) => "33",
        (true, Some(Tone::Quiet)) => "2",
        _ => return state.to_owned(),
    };
    format!("\x1b[{code}m{state}\x1b[0m")
}
