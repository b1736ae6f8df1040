//! `service logs`: a service's container output, as the agents send it
//! through the scheduler, cut into lines per task and stream (a chunk may
//! end mid-line) and prefixed with the task as Docker's.

use std::collections::HashMap;
use std::io::Write as _;

use bronze_proto::scheduler::v1 as pb;
use clap::Args;

use crate::client::{Api, Error};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service name or id.
    service: String,

    /// Keep streaming new output until Ctrl-C.
    #[arg(short, long)]
    follow: bool,

    /// Lines from the end of each task's log: a number or "all".
    #[arg(short = 'n', long, value_name = "N", default_value = "all", value_parser = parse_tail)]
    tail: u32,

    /// Lines only, without the task prefix.
    #[arg(long)]
    raw: bool,

    /// Task prefixes without the task id ("web.1@host1").
    #[arg(long)]
    no_task_ids: bool,
}

fn parse_tail(s: &str) -> Result<u32, String> {
    if s == "all" {
        return Ok(0);
    }
    match s.parse::<u32>() {
        Ok(0) => Err("0: expected a number of lines, 1 or more, or \"all\"".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?}: expected a number of lines or \"all\"")),
    }
}

/// "web.1.abc123@host1" -> "web.1@host1".
fn without_task_id(source: &str) -> String {
    let (task, host) = source.split_once('@').unwrap_or((source, ""));
    let parts: Vec<&str> = task.split('.').collect();
    let task = if parts.len() >= 3 {
        parts[..parts.len() - 1].join(".")
    } else {
        task.to_string()
    };
    if host.is_empty() {
        task
    } else {
        format!("{task}@{host}")
    }
}

/// A task's stream: (task id, "stdout" or "stderr").
type StreamKey = (String, String);

struct Printer {
    raw: bool,
    no_task_ids: bool,
    json: bool,
    /// Bytes after the last newline, per (task, stream).
    partial: HashMap<StreamKey, (String, Vec<u8>)>,
}

impl Printer {
    fn line(&self, source: &str, task_id: &str, stream: &str, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes);
        let source = if source.is_empty() {
            crate::words::short(task_id).to_string()
        } else if self.no_task_ids {
            without_task_id(source)
        } else {
            source.to_string()
        };
        let out = if self.json {
            serde_json::json!({
                "source": source,
                "task_id": task_id,
                "stream": stream,
                "line": text,
            })
            .to_string()
        } else if self.raw {
            text.into_owned()
        } else {
            format!("{source}    | {text}")
        };
        // JSON lines all go to stdout; plain stderr lines to stderr.
        if stream == "stderr" && !self.json {
            let _ = writeln!(std::io::stderr(), "{out}");
        } else {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{out}");
            let _ = o.flush();
        }
    }

    fn chunk(&mut self, c: pb::LogChunk) {
        let key = (c.task_id.clone(), c.stream.clone());
        let entry = self
            .partial
            .entry(key)
            .or_insert_with(|| (c.source.clone(), Vec::new()));
        if !c.source.is_empty() {
            entry.0.clone_from(&c.source);
        }
        entry.1.extend_from_slice(&c.data);
        let source = entry.0.clone();
        let buf = std::mem::take(&mut entry.1);
        let mut rest: &[u8] = &buf;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            self.line(&source, &c.task_id, &c.stream, &rest[..i]);
            rest = &rest[i + 1..];
        }
        if let Some(entry) = self.partial.get_mut(&(c.task_id.clone(), c.stream.clone())) {
            entry.1 = rest.to_vec();
        }
    }

    /// What is left without a final newline.
    fn finish(&mut self) {
        let mut left: Vec<(StreamKey, (String, Vec<u8>))> = self.partial.drain().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        for ((task, stream), (source, bytes)) in left {
            if !bytes.is_empty() {
                self.line(&source, &task, &stream, &bytes);
            }
        }
    }
}

pub async fn run(api: &mut Api, a: LogsArgs) -> Result<(), Error> {
    let mut stream = api
        .client
        .service_logs(pb::ServiceLogsRequest {
            service: a.service.clone(),
            follow: a.follow,
            tail: a.tail,
        })
        .await
        .map_err(|s| api.err(s))?
        .into_inner();
    let mut printer = Printer {
        raw: a.raw,
        no_task_ids: a.no_task_ids,
        json: api.json(),
        partial: HashMap::new(),
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(chunk)) => printer.chunk(chunk),
                Ok(None) => break,
                Err(s) => {
                    printer.finish();
                    return Err(api.err(s));
                }
            },
            _ = &mut ctrl_c => break,
        }
    }
    printer.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(without_task_id("web.1.abc123@host1"), "web.1@host1");
        assert_eq!(without_task_id("web.1"), "web.1");
        assert_eq!(parse_tail("all"), Ok(0));
        assert_eq!(parse_tail("10"), Ok(10));
        assert!(parse_tail("x").is_err());
    }
}
