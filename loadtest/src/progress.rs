//! What a person sees while a run goes: a progress bar while ramping and a status line
//! per phase on a terminal (`indicatif`), plain timestamped lines when stdout is not a
//! terminal (CI logs, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::coordinator::Totals;

/// The terminal view of a run.
pub struct Progress {
    started: Instant,
    tty: bool,
    bar: Option<ProgressBar>,
    last_line: Instant,
    /// Plain lines at most this often while waiting.
    every: Duration,
    quiet: bool,
}

impl Progress {
    /// A view on stdout; bars only if stdout is a terminal. `quiet` prints phase headlines
    /// and results only.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            started: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            bar: None,
            last_line: Instant::now(),
            every: Duration::from_secs(5),
            quiet,
        }
    }

    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Print a line (above the bar, if one is shown).
    pub fn line(&self, text: &str) {
        let text = format!("[{:7.1}s] {text}", self.t());
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    /// Start the ramp's bar towards `clients`.
    pub fn start_ramp(&mut self, clients: u64) {
        if !self.tty {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(clients), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{spinner} ramp [{bar:40}] {pos}/{len} connected, {per_sec}, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        self.bar = Some(bar);
    }

    /// Show the latest totals: the bar during the ramp, else a status line now and then.
    pub fn update(&mut self, phase: &str, t: &Totals) {
        let g = &t.gauges;
        let c = &t.counters;
        let errors: u64 = c.errors().iter().map(|(_, n)| n).sum();
        let msg = format!(
            "pending {} waiting {} down {} errors {} pongs {} pushes {}/{}",
            g.pending, g.waiting, g.down, errors, c.pongs, c.push_received, c.push_delivered
        );
        if let Some(bar) = &self.bar {
            bar.set_position(g.established);
            bar.set_message(msg);
            return;
        }
        if !self.quiet && self.last_line.elapsed() >= self.every {
            self.last_line = Instant::now();
            self.line(&format!("{phase}: established {} {msg}", g.established));
        }
    }

    /// End the ramp's bar.
    pub fn end_ramp(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end_ramp();
    }
}
