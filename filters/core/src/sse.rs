//! Incremental server-sent-events parsing for streamed responses, which reach
//! a filter in chunks split at arbitrary bytes (mid-line, mid-UTF-8).

/// One event: the `event:` name (empty when absent) and the joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Feeds on chunks and yields complete events; keeps the incomplete tail.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending.get(start..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            let end = start + offset;
            let line = self.pending.get(start..end).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.pending.drain(..start);
        events
    }

    /// Bytes received that do not yet form a complete line.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let done = std::mem::take(&mut self.current);
            let had_data = std::mem::take(&mut self.has_data);
            return (had_data || !done.event.is_empty()).then_some(done);
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"event: message_start\ndata: {\"a\":1}\n\n: ping\n\ndata: {\"b\":\"\xc3\xa9\"}\r\n\r\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<Event> {
        vec![
            Event { event: "message_start".into(), data: "{\"a\":1}".into() },
            Event { event: String::new(), data: "{\"b\":\"é\"}".into() },
            Event { event: String::new(), data: "line1\nline2".into() },
            Event { event: String::new(), data: "[DONE]".into() },
        ]
    }

    #[test]
    fn parses_a_whole_stream() {
        let mut parser = Parser::new();
        assert_eq!(parser.push(STREAM), expected());
        assert_eq!(parser.pending_bytes(), 0);
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        for split in 0..=STREAM.len() {
            let mut parser = Parser::new();
            let (a, b) = STREAM.split_at(split);
            let mut events = parser.push(a);
            events.extend(parser.push(b));
            assert_eq!(events, expected(), "split at {split}");
        }
        let mut parser = Parser::new();
        let events: Vec<_> = STREAM.iter().flat_map(|b| parser.push(&[*b])).collect();
        assert_eq!(events, expected(), "byte by byte");
    }

    #[test]
    fn an_unterminated_event_stays_pending() {
        let mut parser = Parser::new();
        assert!(parser.push(b"data: {\"cut\":").is_empty());
        assert_eq!(parser.pending_bytes(), 13);
    }
}
