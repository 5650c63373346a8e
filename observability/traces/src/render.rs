//! A trace drawn as a waterfall: one row per span in tree order (children under their parent, by start
//! time), indented by depth, with a bar on a time axis shared by the whole trace.

use crate::SpanRecord;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// `spans` in tree order with their depth: roots (spans whose parent is not among `spans`) by start time,
/// each followed by its descendants.
pub fn tree<'a>(spans: &[&'a SpanRecord]) -> Vec<(usize, &'a SpanRecord)> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains(s.parent_span_id.as_str()) {
            children
                .entry(s.parent_span_id.as_str())
                .or_default()
                .push(s);
        } else {
            roots.push(*s);
        }
    }
    roots.sort_by_key(|s| (s.start_ns, s.end_ns));
    for c in children.values_mut() {
        c.sort_by_key(|s| (s.start_ns, s.end_ns));
    }
    let mut rows = Vec::with_capacity(spans.len());
    // Iterative depth-first walk (a trace may be deep; recursion depth is not ours to bound).
    let mut stack: Vec<(usize, &SpanRecord)> = roots.into_iter().rev().map(|r| (0, r)).collect();
    while let Some((depth, s)) = stack.pop() {
        rows.push((depth, s));
        for c in children.get(s.span_id.as_str()).into_iter().flatten().rev() {
            stack.push((depth + 1, c));
        }
    }
    rows
}

fn label(s: &SpanRecord) -> String {
    let service = s.service.trim_start_matches("allot-");
    let mut l = format!("{} [{service}]", s.name);
    if let Some(state) = s.attr("allot.task.state") {
        let _ = write!(l, " {state}");
    }
    if s.status == 2 {
        l.push_str(" ERROR");
    }
    l
}

fn bounds(spans: &[&SpanRecord]) -> (u64, u64) {
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.end_ns)
        .max()
        .unwrap_or(t0)
        .max(t0 + 1);
    (t0, t1)
}

/// `spans` (one trace) as text for a terminal, `width` columns of bar: per row, the offset from the trace's
/// start (ms), the span's label (indented by depth, service in brackets, task state, ERROR), a bar, and the
/// duration (ms).
pub fn text_waterfall(spans: &[&SpanRecord], width: usize) -> String {
    let rows = tree(spans);
    let (t0, t1) = bounds(spans);
    let scale = width.max(10) as f64 / (t1 - t0) as f64;
    let labels: Vec<String> = rows
        .iter()
        .map(|(d, s)| format!("{}{}", "  ".repeat(*d), label(s)))
        .collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for ((_, s), l) in rows.iter().zip(&labels) {
        let from = ((s.start_ns - t0) as f64 * scale) as usize;
        let len = ((s.end_ns.saturating_sub(s.start_ns)) as f64 * scale).round() as usize;
        let bar = format!("{}{}", " ".repeat(from), "█".repeat(len.max(1)));
        let _ = writeln!(
            out,
            "{:>9.1}  {l:<label_w$}  {bar:<w$}  {:.2} ms",
            (s.start_ns - t0) as f64 / 1e6,
            s.duration_ms(),
            w = width.max(10) + 1,
        );
    }
    out
}

/// `spans` (one trace) as an SVG waterfall titled `title`, bars coloured by service, with a legend and a
/// time axis in milliseconds.
pub fn svg_waterfall(title: &str, spans: &[&SpanRecord]) -> String {
    let rows = tree(spans);
    let (t0, t1) = bounds(spans);
    let (label_w, bar_w, row_h, top) = (600.0, 620.0, 18.0, 56.0);
    let width = label_w + bar_w + 90.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
    ];
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    let colour =
        |svc: &str| palette[services.iter().position(|s| *s == svc).unwrap_or(0) % palette.len()];
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let total_ms = (t1 - t0) as f64 / 1e6;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="8" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut x = 8.0;
    for svc in &services {
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{}</text>"#,
            colour(svc),
            x + 14.0,
            esc(svc)
        );
        x += 24.0 + 7.0 * svc.len() as f64;
    }
    for tick in 0..=4 {
        let frac = tick as f64 / 4.0;
        let gx = label_w + frac * bar_w;
        let _ = write!(
            svg,
            r##"<line x1="{gx}" y1="{}" x2="{gx}" y2="{}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle" fill="#555">{:.0} ms</text>"##,
            top - 6.0,
            height - 30.0,
            height - 16.0,
            frac * total_ms
        );
    }
    for (i, (depth, s)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let lx = 8.0 + 12.0 * *depth as f64;
        let bx = label_w + (s.start_ns - t0) as f64 / (t1 - t0) as f64 * bar_w;
        let bw = ((s.end_ns.saturating_sub(s.start_ns)) as f64 / (t1 - t0) as f64 * bar_w).max(1.5);
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{}">{}</text><rect x="{bx:.1}" y="{}" width="{bw:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}" fill="#333">{:.2} ms</text>"##,
            y + 12.0,
            esc(&label(s)),
            y + 3.0,
            row_h - 6.0,
            colour(&s.service),
            (bx + bw + 4.0).min(width - 80.0),
            y + 12.0,
            s.duration_ms()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            service: "allot-offer-broker".into(),
            pid: 1,
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            kind: 1,
            attributes: Default::default(),
            links: vec![],
            start_ns: start,
            end_ns: end,
            status: 0,
        }
    }

    #[test]
    fn children_follow_their_parent_by_start_time() {
        let spans = [
            span("c2", "r", "second", 30, 40),
            span("r", "", "root", 0, 100),
            span("g", "c1", "grandchild", 12, 15),
            span("c1", "r", "first", 10, 20),
        ];
        let refs: Vec<&SpanRecord> = spans.iter().collect();
        let order: Vec<(usize, &str)> = tree(&refs)
            .iter()
            .map(|(d, s)| (*d, s.name.as_str()))
            .collect();
        assert_eq!(
            order,
            [(0, "root"), (1, "first"), (2, "grandchild"), (1, "second")]
        );
        let text = text_waterfall(&refs, 20);
        assert_eq!(text.lines().count(), 4);
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .contains("    grandchild [offer-broker]")
        );
        let svg = svg_waterfall("a <trace>", &refs);
        assert!(svg.contains("a &lt;trace&gt;") && svg.ends_with("</svg>\n"));
    }
}
