//! Text for a terminal: control characters from another party's text replaced (so an app cannot
//! move the cursor or recolour the screen), and widths in columns (East Asian wide characters
//! take two, so Chinese app names line up).

/// Replaces control characters, so text from an app cannot move the cursor or recolour the
/// terminal.
pub fn clean(text: &str) -> String {
    replace_controls(text, '?')
}

/// `text` with every control character (newlines, escapes) replaced by `with`.
pub fn replace_controls(text: &str, with: char) -> String {
    text.chars()
        .map(|c| if c.is_control() { with } else { c })
        .collect()
}

/// The number of terminal columns a string takes: East Asian wide characters take two.
pub fn display_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    if c.is_control() {
        return 0;
    }
    match u32::from(c) {
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

/// The columns a line printed at a terminal keeps within.
pub const LINE_COLUMNS: usize = 80;

/// `text` broken at spaces into lines of at most `columns` terminal columns (a word longer than
/// that keeps its own line), the lines after the first indented by two spaces.
pub fn wrap(text: &str, columns: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let indent = if lines.is_empty() { 0 } else { 2 };
        if !line.is_empty() && indent + display_width(&line) + 1 + display_width(word) > columns {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines.join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_within_the_columns() {
        let text = "This number has been yours since 2024-03-01. Accounts bound before then \
                    belong to a previous holder of the number.";
        let wrapped = wrap(text, 40);
        assert!(wrapped.lines().all(|l| display_width(l) <= 40), "{wrapped}");
        assert_eq!(wrapped.replace("\n  ", " "), text);
        assert_eq!(wrap("short", 80), "short");
        assert_eq!(wrap(&"x".repeat(90), 80), "x".repeat(90));
    }
}
