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
