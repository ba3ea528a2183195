//! The progress bars of the CLI's long loops: position, a whole-number rate and the time left.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar of `len` steps labelled `label`, its rate rounded to whole steps a second (indicatif's
/// own `{per_sec}` prints four decimals).
pub fn bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{label:<13} {{bar:30}} {{pos}}/{{len}} {{rate}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .map(|s| {
                s.with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/s", rate(state.per_sec()));
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A rate as people read it: whole numbers, and one decimal below 10.
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0".into()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}")
    } else {
        format!("{per_sec:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates_have_no_long_decimals() {
        assert_eq!(rate(1234.5678), "1235");
        assert_eq!(rate(7.25), "7.2");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "0");
    }
}
