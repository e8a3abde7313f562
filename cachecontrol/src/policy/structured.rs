//! The part of Structured Field Values (RFC 8941) that targeted cache-control fields
//! (RFC 9213) need: a strict Dictionary parser.
//!
//! Strictness matters here: RFC 9213 §2.1 says a targeted field that fails to parse is
//! ignored as a whole, and the cache falls back to Cache-Control. Parameters are read
//! and dropped; inner lists, decimals and byte sequences are kept as [`Item::Other`].

/// A dictionary member's value, as far as cache directives care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `?1` / `?0`, and a bare key (which means `?1`).
    Boolean(bool),
    /// An integer, at most 15 digits.
    Integer(i64),
    /// A string, unescaped.
    String(String),
    /// A token.
    Token(String),
    /// A decimal, byte sequence, date, display string or inner list.
    Other,
}

/// Parses a Dictionary (RFC 8941 §4.2.2). Later duplicates of a key replace earlier
/// ones, as the RFC says; the order of first appearance is kept.
pub fn parse_dictionary(input: &[u8]) -> Option<Vec<(String, Item)>> {
    let mut parser = Parser { input, pos: 0 };
    let mut members: Vec<(String, Item)> = Vec::new();
    parser.skip_sp();
    if parser.at_end() {
        return Some(members);
    }
    loop {
        let key = parser.key()?;
        let item = if parser.eat(b'=') {
            parser.item_or_inner_list()?
        } else {
            Item::Boolean(true)
        };
        parser.parameters()?;
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => member.1 = item,
            None => members.push((key, item)),
        }
        parser.skip_ows();
        if parser.at_end() {
            return Some(members);
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip_ows();
        if parser.at_end() {
            // A trailing comma is an error.
            return None;
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek() {
            Some(b) if b.is_ascii_lowercase() || b == b'*' => self.pos += 1,
            _ => return None,
        }
        while let Some(b) = self.peek() {
            if b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        String::from_utf8(self.input[start..self.pos].to_vec()).ok()
    }

    fn item_or_inner_list(&mut self) -> Option<Item> {
        if self.eat(b'(') {
            loop {
                self.skip_sp();
                if self.eat(b')') {
                    return Some(Item::Other);
                }
                self.bare_item()?;
                self.parameters()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return None;
                }
            }
        }
        self.bare_item()
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.pos += 1;
                let value = match self.peek()? {
                    b'1' => true,
                    b'0' => false,
                    _ => return None,
                };
                self.pos += 1;
                Some(Item::Boolean(value))
            }
            b':' => {
                self.pos += 1;
                while let Some(b) = self.peek() {
                    self.pos += 1;
                    if b == b':' {
                        return Some(Item::Other);
                    }
                    if !(b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
                        return None;
                    }
                }
                None
            }
            b'@' => {
                self.pos += 1;
                self.number().map(|_| Item::Other)
            }
            b'%' => {
                self.pos += 1;
                self.string().map(|_| Item::Other)
            }
            b if b.is_ascii_alphabetic() || b == b'*' => self.token(),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Item> {
        let negative = self.eat(b'-');
        let start = self.pos;
        let mut dot = None;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() {
                self.pos += 1;
            } else if b == b'.' && dot.is_none() {
                dot = Some(self.pos);
                self.pos += 1;
            } else {
                break;
            }
        }
        let digits = &self.input[start..self.pos];
        match dot {
            None => {
                if digits.is_empty() || digits.len() > 15 {
                    return None;
                }
                let value: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                Some(Item::Integer(if negative { -value } else { value }))
            }
            Some(dot) => {
                let integer_digits = dot - start;
                let fraction_digits = self.pos - dot - 1;
                if integer_digits == 0 || integer_digits > 12 || !(1..=3).contains(&fraction_digits)
                {
                    return None;
                }
                Some(Item::Other)
            }
        }
    }

    fn string(&mut self) -> Option<Item> {
        if !self.eat(b'"') {
            return None;
        }
        let mut value = String::new();
        loop {
            let b = self.peek()?;
            self.pos += 1;
            match b {
                b'"' => return Some(Item::String(value)),
                b'\\' => {
                    let escaped = self.peek()?;
                    if escaped != b'"' && escaped != b'\\' {
                        return None;
                    }
                    self.pos += 1;
                    value.push(char::from(escaped));
                }
                0x20..=0x7e => value.push(char::from(b)),
                _ => return None,
            }
        }
    }

    fn token(&mut self) -> Option<Item> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b) {
                self.pos += 1;
            } else {
                break;
            }
        }
        String::from_utf8(self.input[start..self.pos].to_vec())
            .ok()
            .map(Item::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_directives_as_a_dictionary() {
        let members =
            parse_dictionary(b"max-age=60, no-store, private=\"x-user\", stale-if-error=?1")
                .unwrap();
        assert_eq!(
            members,
            vec![
                ("max-age".to_owned(), Item::Integer(60)),
                ("no-store".to_owned(), Item::Boolean(true)),
                ("private".to_owned(), Item::String("x-user".to_owned())),
                ("stale-if-error".to_owned(), Item::Boolean(true)),
            ]
        );
    }

    #[test]
    fn parameters_are_dropped_and_duplicates_replace() {
        let members = parse_dictionary(b"max-age=60;foo=bar, max-age=10").unwrap();
        assert_eq!(members, vec![("max-age".to_owned(), Item::Integer(10))]);
    }

    #[test]
    fn invalid_dictionaries_fail_as_a_whole() {
        for input in [
            &b"Max-Age=60"[..],
            b"max-age=60,",
            b"max-age=\"60",
            b"max-age=1234567890123456",
            b"max-age=60 no-store",
            b"max-age==60",
            b", max-age=60",
        ] {
            assert_eq!(
                parse_dictionary(input),
                None,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn other_types_parse_but_are_not_kept() {
        let members =
            parse_dictionary(b"a=1.5, b=:aGVsbG8=:, c=(1 2), d=@1659578233, e=-3").unwrap();
        assert_eq!(members[0].1, Item::Other);
        assert_eq!(members[1].1, Item::Other);
        assert_eq!(members[2].1, Item::Other);
        assert_eq!(members[3].1, Item::Other);
        assert_eq!(members[4].1, Item::Integer(-3));
    }
}
