//! Progress of long admin work (a backup, a listing of many rows): drawn on standard error when it
//! is a terminal and cleared when the work ends; piped, redirected or under cron nothing is
//! drawn, so a script sees only the result.

use std::future::Future;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether progress is drawn at all: only for a person at a terminal.
fn at_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A bar of `len` steps drawn with `template` (indicatif's syntax), or a hidden one when piped.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = if at_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `work` with a spinner saying `what` and the time spent, for work whose size is not known
/// in advance (a query that loads every account).
pub async fn spinning<T>(what: &str, work: impl Future<Output = T>) -> T {
    let spinner = bar(0, "{spinner} {msg} {elapsed}");
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = work.await;
    spinner.finish_and_clear();
    out
}
