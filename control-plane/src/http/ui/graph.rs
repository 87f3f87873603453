//! The access graph of one event, laid out server-side as SVG shapes: producer → event →
//! grants → subscriptions → streams. Pure: a view in, positioned boxes and lines out.

use api::{AccessView, GrantStatus};

const COLUMN_WIDTH: i64 = 196;
const COLUMN_GAP: i64 = 36;
const NODE_HEIGHT: i64 = 62;
const ROW_GAP: i64 = 14;
const MARGIN: i64 = 8;
/// Characters that fit on one line of a box at the stylesheet's font size.
const LINE_CHARS: usize = 26;

pub struct Node {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
    /// CSS class: `producer`, `event`, `grant`, `expired`, `subscription`, `idle`, `stream`.
    pub kind: &'static str,
    pub lines: Vec<String>,
    pub href: Option<String>,
}

impl Node {
    /// Baseline of text line `i`.
    pub fn line_y(&self, i: &usize) -> i64 {
        self.y + 20 + 17 * i64::try_from(*i).unwrap_or(0)
    }
}

pub struct Edge {
    pub x1: i64,
    pub y1: i64,
    pub x2: i64,
    pub y2: i64,
    /// CSS class: `flow` where records go, `blocked` where a subscription has no access.
    pub kind: &'static str,
}

pub struct Graph {
    pub width: i64,
    pub height: i64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

fn clip(text: &str) -> String {
    if text.chars().count() <= LINE_CHARS {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(LINE_CHARS - 1).collect();
        clipped.push('…');
        clipped
    }
}

struct Column {
    kind: &'static str,
    lines: Vec<String>,
    href: Option<String>,
}

/// Lays out `view`. Grants shown are those not revoked; subscriptions link from the grant of
/// their owner, or straight from the event when their owner owns it (or has no access: blocked).
pub fn access_graph(view: &AccessView) -> Graph {
    let event = &view.event;
    let grants: Vec<_> = view
        .grants
        .iter()
        .filter(|g| g.status != GrantStatus::Revoked)
        .collect();
    let mut streams: Vec<&str> = view
        .subscriptions
        .iter()
        .map(|s| s.stream.as_str())
        .collect();
    streams.sort_unstable();
    streams.dedup();

    let columns: [Vec<Column>; 5] = [
        vec![Column {
            kind: "producer",
            lines: vec!["producer".to_owned(), clip(&event.owner)],
            href: None,
        }],
        vec![Column {
            kind: "event",
            lines: vec![clip(&event.name), event.classification.to_string()],
            href: None,
        }],
        grants
            .iter()
            .map(|g| Column {
                kind: if g.status == GrantStatus::Active {
                    "grant"
                } else {
                    "expired"
                },
                lines: vec![
                    clip(&format!("grant → {}", g.grantee)),
                    clip(&format!("by {}: {}", g.granted_by, g.reason)),
                    match g.expires_at {
                        Some(at) if g.status == GrantStatus::Active => {
                            format!("until {}", at.format("%Y-%m-%d %H:%M"))
                        }
                        Some(at) => format!("expired {}", at.format("%Y-%m-%d")),
                        None => "no expiry".to_owned(),
                    },
                ],
                href: None,
            })
            .collect(),
        view.subscriptions
            .iter()
            .map(|s| Column {
                kind: if s.delivering { "subscription" } else { "idle" },
                lines: vec![
                    clip(&format!("subscription {}", short_id(&s.subscription_id))),
                    clip(&format!("owner {}", s.owner)),
                    if s.delivering {
                        "delivering"
                    } else {
                        "not delivering"
                    }
                    .to_owned(),
                ],
                href: None,
            })
            .collect(),
        streams
            .iter()
            .map(|name| Column {
                kind: "stream",
                lines: vec!["stream".to_owned(), clip(name)],
                href: Some(format!("/ui/streams/{name}")),
            })
            .collect(),
    ];
    let tallest = columns.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let height = MARGIN * 2 + to_i64(tallest) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP;
    // Each column's boxes centred vertically; positions[c][i] is the box of column c, row i.
    let mut nodes = Vec::new();
    let mut positions: Vec<Vec<usize>> = Vec::new();
    for (c, column) in columns.into_iter().enumerate() {
        let used = to_i64(column.len()) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP;
        let top = (height - used) / 2;
        let mut indices = Vec::new();
        for (r, entry) in column.into_iter().enumerate() {
            indices.push(nodes.len());
            nodes.push(Node {
                x: MARGIN + to_i64(c) * (COLUMN_WIDTH + COLUMN_GAP),
                y: top + to_i64(r) * (NODE_HEIGHT + ROW_GAP),
                width: COLUMN_WIDTH,
                height: NODE_HEIGHT,
                kind: entry.kind,
                lines: entry.lines,
                href: entry.href,
            });
        }
        positions.push(indices);
    }
    let mut edges = Vec::new();
    let mut link = |from: usize, to: usize, kind: &'static str| {
        let (a, b) = (&nodes[from], &nodes[to]);
        edges.push(Edge {
            x1: a.x + a.width,
            y1: a.y + a.height / 2,
            x2: b.x,
            y2: b.y + b.height / 2,
            kind,
        });
    };
    link(positions[0][0], positions[1][0], "flow");
    for &grant in &positions[2] {
        link(positions[1][0], grant, "flow");
    }
    for (i, subscription) in view.subscriptions.iter().enumerate() {
        let node = positions[3][i];
        let kind = if subscription.delivering {
            "flow"
        } else {
            "blocked"
        };
        let from = match grants.iter().position(|g| g.grantee == subscription.owner) {
            Some(g) if subscription.owner != event.owner => positions[2][g],
            _ => positions[1][0],
        };
        link(from, node, kind);
        if let Some(s) = streams.iter().position(|name| *name == subscription.stream) {
            link(node, positions[4][s], "flow");
        }
    }
    Graph {
        width: MARGIN * 2 + 5 * COLUMN_WIDTH + 4 * COLUMN_GAP,
        height,
        nodes,
        edges,
    }
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / 4)
}
