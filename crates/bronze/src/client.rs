//! The scheduler's control API as the CLI reaches it: where (`--scheduler`,
//! BRONZE_SCHEDULER), with which token (`--token`, BRONZE_SCHEDULER_TOKEN,
//! sent as `authorization: Bearer <token>` on every call), and how its
//! answers become the one line a failed command prints
//! (`bronze: <message>`, exit 1).

use std::fmt;
use std::time::Duration;

use bronze_proto::scheduler::v1 as pb;
use bronze_proto::scheduler::v1::scheduler_client::SchedulerClient;
use clap::{Args, ValueEnum};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub const DEFAULT_SCHEDULER: &str = "http://127.0.0.1:7700";

/// How long connecting to the scheduler may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Docker-style tables and messages.
    Table,
    /// JSON on stdout (progress, if any, goes to stderr).
    Json,
}

/// Options of every `service` and `node` command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Scheduler options (service and node commands)")]
pub struct ApiArgs {
    /// The scheduler's control API.
    #[arg(
        long,
        global = true,
        env = "BRONZE_SCHEDULER",
        default_value = DEFAULT_SCHEDULER,
        value_name = "URL"
    )]
    pub scheduler: String,

    /// The scheduler's admin token (its --admin-token), sent as
    /// `authorization: Bearer <TOKEN>`.
    #[arg(
        long,
        global = true,
        env = "BRONZE_SCHEDULER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Output format: docker-style tables, or JSON on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = SchedulerClient<InterceptedService<Channel, Auth>>;

/// Why a command failed; printed as `bronze: <this>`.
#[derive(Debug)]
pub enum Error {
    /// The scheduler answered with an error.
    Api { status: tonic::Status, url: String },
    /// The scheduler could not be reached.
    Connect { url: String, cause: String },
    /// Anything else, already phrased for people.
    Message(String),
    /// The command printed its own errors (one per argument); exit 1.
    Reported,
    /// Ctrl-C while waiting; exit 130.
    Interrupted(String),
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Message(m.into())
    }
}

/// The causes of an error, joined: tonic's transport errors say little at
/// the top ("transport error") and the reason below.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api { status, url } => {
                let mut message = status.message().to_string();
                if let Some(source) = std::error::Error::source(status) {
                    let cause = chain(source);
                    if !message.contains(&cause) {
                        message = format!("{message}: {cause}");
                    }
                }
                match status.code() {
                    tonic::Code::Unavailable => write!(f, "the scheduler at {url}: {message}"),
                    tonic::Code::Unauthenticated => write!(
                        f,
                        "{message} (give it with --token or BRONZE_SCHEDULER_TOKEN)"
                    ),
                    _ if message.is_empty() => write!(f, "{}", status.code().description()),
                    _ => f.write_str(&message),
                }
            }
            Error::Connect { url, cause } => write!(
                f,
                "cannot reach the scheduler at {url}: {cause} (is bronze-scheduler running? \
                 --scheduler or BRONZE_SCHEDULER say where it is)"
            ),
            Error::Message(m) | Error::Interrupted(m) => f.write_str(m),
            Error::Reported => f.write_str("failed"),
        }
    }
}

/// A connected client, and the URL it was given (for error messages).
pub struct Api {
    pub client: Client,
    pub url: String,
    pub output: Output,
}

impl Api {
    pub async fn connect(args: &ApiArgs) -> Result<Self, Error> {
        let url = if args.scheduler.contains("://") {
            args.scheduler.clone()
        } else {
            format!("http://{}", args.scheduler)
        };
        if !url.starts_with("http://") {
            return Err(Error::msg(format!(
                "--scheduler {url}: expected an http:// URL (the scheduler serves plain gRPC; \
                 put TLS in front of it with the gateway)"
            )));
        }
        let auth = match args.token.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        Error::msg("--token: expected printable ASCII (a token, not a file)")
                    })?,
            ),
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::msg(format!("--scheduler {url}: {}", chain(&e))))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| Error::Connect {
            url: url.clone(),
            cause: chain(&e),
        })?;
        Ok(Self {
            client: SchedulerClient::with_interceptor(channel, Auth(auth))
                .max_decoding_message_size(64 << 20),
            url,
            output: args.output,
        })
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// An error the scheduler answered, with the URL for context.
    pub fn err(&self, status: tonic::Status) -> Error {
        Error::Api {
            status,
            url: self.url.clone(),
        }
    }

    pub async fn get_service(&mut self, name: &str) -> Result<pb::ServiceResponse, Error> {
        self.client
            .get_service(pb::GetServiceRequest {
                service: name.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.err(s))
    }

    /// Every service, all pages.
    pub async fn list_services(&mut self) -> Result<Vec<pb::ServiceResponse>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .list_services(pb::ListServicesRequest {
                    page_size: 0,
                    page_token: token,
                })
                .await
                .map_err(|s| self.err(s))?
                .into_inner();
            out.extend(page.services);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Every task matching, all pages, in the scheduler's order (service,
    /// slot, newest first).
    pub async fn list_tasks(
        &mut self,
        service: &str,
        node: &str,
        desired_running: bool,
    ) -> Result<Vec<pb::Task>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .list_tasks(pb::ListTasksRequest {
                    service: service.to_string(),
                    node: node.to_string(),
                    desired_running,
                    page_size: 0,
                    page_token: token,
                })
                .await
                .map_err(|s| self.err(s))?
                .into_inner();
            out.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Every node, all pages.
    pub async fn list_nodes(&mut self) -> Result<Vec<pb::Node>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .list_nodes(pb::ListNodesRequest {
                    page_size: 0,
                    page_token: token,
                })
                .await
                .map_err(|s| self.err(s))?
                .into_inner();
            out.extend(page.nodes);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }
}

/// Runs `f` for each argument, printing each failure as `bronze: ...` on
/// stderr and going on; fails (already reported) if any did.
pub async fn each<T>(
    api: &mut Api,
    items: &[T],
    mut f: impl AsyncFnMut(&mut Api, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut failed = false;
    for item in items {
        if let Err(e) = f(api, item).await {
            eprintln!("bronze: {e}");
            failed = true;
        }
    }
    if failed { Err(Error::Reported) } else { Ok(()) }
}

/// `inspect` of several names: `get` for each (failures printed as `each`
/// does), then what was found as Docker prints it: a JSON array, or with
/// `--pretty` each one's text, a blank line between.
pub async fn inspect_each<T>(
    api: &mut Api,
    names: &[String],
    pretty: Option<fn(&T) -> String>,
    json: fn(&T) -> serde_json::Value,
    mut get: impl AsyncFnMut(&mut Api, &String) -> Result<T, Error>,
) -> Result<(), Error> {
    let mut found = Vec::new();
    let result = each(api, names, async |api, name| {
        found.push(get(api, name).await?);
        Ok(())
    })
    .await;
    match pretty {
        Some(text) => {
            let texts: Vec<String> = found.iter().map(text).collect();
            print!("{}", texts.join("\n\n"));
        }
        None => crate::json::print(&serde_json::Value::Array(found.iter().map(json).collect())),
    }
    result
}

/// `rm` of several names: `remove` for each (failures printed as `each`
/// does), each name removed printed, or all of them as a JSON array.
pub async fn remove_each(
    api: &mut Api,
    names: &[String],
    mut remove: impl AsyncFnMut(&mut Api, &String) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut removed = Vec::new();
    let result = each(api, names, async |api, name| {
        remove(api, name).await?;
        if !api.json() {
            println!("{name}");
        }
        removed.push(serde_json::Value::String(name.clone()));
        Ok(())
    })
    .await;
    if api.json() {
        crate::json::print(&serde_json::Value::Array(removed));
    }
    result
}
