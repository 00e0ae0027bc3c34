//! Names quoted the way Python's `repr()` quotes a `str`, so that fault
//! messages read exactly as gocept.lockd's did.

use std::fmt::Write as _;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// `repr(s)` as Python 3 writes it: single quotes, or double quotes when `s`
/// holds `'` but no `"`; backslash, the quote, `\t`, `\n`, `\r` escaped, and
/// characters Python deems unprintable as `\xhh`, `\uhhhh` or `\Uhhhhhhhh`.
pub fn repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let code = u32::from(c);
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character: everything but the
/// "Other" and "Separator" categories, with the space as the one exception.
fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Other | GeneralCategoryGroup::Separator
    )
}

#[cfg(test)]
mod tests {
    use super::repr;

    #[test]
    fn quotes_as_python_does() {
        // Each expectation is what CPython 3 prints for repr() of the input.
        let cases = [
            ("client1", "'client1'"),
            ("", "''"),
            ("it's", "\"it's\""),
            ("say \"hi\"", "'say \"hi\"'"),
            ("both ' and \"", "'both \\' and \"'"),
            ("back\\slash", "'back\\\\slash'"),
            ("tab\tnl\ncr\r", "'tab\\tnl\\ncr\\r'"),
            ("nul\0bell\x07del\x7f", "'nul\\x00bell\\x07del\\x7f'"),
            ("nbsp\u{a0}", "'nbsp\\xa0'"),
            ("zwsp\u{200b}", "'zwsp\\u200b'"),
            ("ünïcödé ✓ 日本", "'ünïcödé ✓ 日本'"),
            ("tag\u{e0001}", "'tag\\U000e0001'"),
        ];
        for (input, want) in cases {
            assert_eq!(repr(input), want, "repr({input:?})");
        }
    }
}
