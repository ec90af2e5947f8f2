//! A simulated `unbind.v1.SubscriberRegistry` for the demo and the tests: the real-name record
//! comes from a TOML file of subscribers, and "sent" SMS messages are appended to a JSON-lines file
//! (and, if asked, shown on the terminal as the simulated handset's screen).
//! [`SimulatedRegistry::start_with_tls`] serves it over TLS, optionally requiring client
//! certificates, as a carrier's registry would.
//!
//! The subscribers file:
//! ```toml
//! [[subscribers]]
//! phone_number = "+8613800138000"
//! id_last_six = "12345X"
//! holder_since = "2024-03-01"     # a date (midnight UTC) or an RFC 3339 time
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::clock::timestamp_from_ms;
use crate::domain::{E164, IdLastSix};
use crate::proto::subscriber_registry_server::{SubscriberRegistry, SubscriberRegistryServer};
use crate::proto::{
    SendSmsRequest, SendSmsResponse, VerifySubscriberRequest, VerifySubscriberResponse,
};

pub use super::sms_templates::{Language, SmsTemplates};

/// One holder of a number, as the carrier's real-name record knows them. The domain's own types
/// hold the number and the ID characters: a subscriber the gateway could never be asked about
/// cannot be written down, and `Debug` shows neither in full, so a subscriber can be logged by
/// mistake without leaking them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    pub phone_number: E164,
    /// The last six characters of the holder's national ID: the day of birth (`01`–`31`), three
    /// digits, then a digit or `X`.
    pub id_last_six: IdLastSix,
    /// When the current holder got the number.
    pub holder_since: DateTime<Utc>,
    /// The language the holder's SMS are written in.
    pub language: Language,
}

impl Subscriber {
    /// A subscriber from text as a file or a test writes it: the number in E.164 form and the ID
    /// characters as the gateway accepts them. `None` if either is not.
    pub fn new(phone_number: &str, id_last_six: &str, holder_since: DateTime<Utc>) -> Option<Self> {
        Some(Self {
            phone_number: exact_e164(phone_number)?,
            id_last_six: IdLastSix::parse(id_last_six).ok()?,
            holder_since,
            language: Language::default(),
        })
    }

    /// The same subscriber, written to in `language`.
    pub fn in_language(self, language: Language) -> Self {
        Self { language, ..self }
    }
}

/// The subscribers file as written.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SubscribersFile {
    #[serde(default)]
    subscribers: Vec<SubscriberEntry>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SubscriberEntry {
    phone_number: String,
    id_last_six: String,
    /// A string ("2024-03-01" or RFC 3339), or a TOML date / date-time written without quotes.
    holder_since: toml::Value,
    /// "zh" (the default) or "en": the language of this holder's SMS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    language: Option<Language>,
}

/// Reads a subscribers file. Errors name the file and the problem (never the ID characters, and
/// the number only masked).
pub fn load_subscribers(path: &Path) -> anyhow::Result<Vec<Subscriber>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the subscribers file {}", path.display()))?;
    parse_subscribers(&text).with_context(|| format!("in the subscribers file {}", path.display()))
}

/// Parses the text of a subscribers file.
fn parse_subscribers(text: &str) -> anyhow::Result<Vec<Subscriber>> {
    // The TOML error's own rendering quotes the offending line, which may hold a number or ID
    // characters: report only its message and position.
    let file: SubscribersFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        anyhow::anyhow!("{at}{}", e.message().trim_end())
    })?;

    let mut subscribers = Vec::with_capacity(file.subscribers.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, entry) in file.subscribers.into_iter().enumerate() {
        let n = index + 1;
        let Some(phone_number) = exact_e164(&entry.phone_number) else {
            bail!(
                "subscriber {n}: phone_number must be a mobile number in E.164 form, e.g. \
                 +8613800138000"
            );
        };
        let Ok(id_last_six) = IdLastSix::parse(&entry.id_last_six) else {
            bail!(
                "subscriber {n}: id_last_six must be a day of the month (01-31), three digits, \
                 then a digit or X"
            );
        };
        let holder_since = parse_holder_since(&entry.holder_since)
            .with_context(|| format!("subscriber {n}: holder_since"))?;
        if let Some(first) = seen.insert(phone_number.expose().to_owned(), n) {
            bail!(
                "subscriber {n}: {} is already listed as subscriber {first}",
                phone_number.masked()
            );
        }
        subscribers.push(Subscriber {
            phone_number,
            id_last_six,
            holder_since,
            language: entry.language.unwrap_or_default(),
        });
    }
    Ok(subscribers)
}

/// Writes a subscribers file that [`load_subscribers`] reads back. The file is replaced atomically
/// (written beside it, then renamed), so a reader never sees half of it.
pub fn write_subscribers(path: &Path, subscribers: &[Subscriber]) -> anyhow::Result<()> {
    let text = render_subscribers(subscribers)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("writing the subscribers file {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("writing the subscribers file {}", path.display()))?;
    Ok(())
}

fn render_subscribers(subscribers: &[Subscriber]) -> anyhow::Result<String> {
    let file = SubscribersFile {
        subscribers: subscribers
            .iter()
            .map(|s| SubscriberEntry {
                phone_number: s.phone_number.expose().to_owned(),
                id_last_six: s.id_last_six.expose().to_owned(),
                holder_since: toml::Value::String(format_holder_since(s.holder_since)),
                language: Some(s.language),
            })
            .collect(),
    };
    let body = toml::to_string(&file).context("rendering the subscribers file")?;
    Ok(format!(
        "# Subscribers of the simulated registry: number (E.164), last six ID characters, and\n\
         # since when the holder has had the number (a date, or an RFC 3339 time).\n\n{body}"
    ))
}

/// One SMS the simulated registry "sent": a line of the SMS file. Besides the text the holder
/// reads, it keeps what the gateway sent (the template and its params) and, for a verification,
/// the code on its own, so scripts never parse a sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsRecord {
    /// E.164.
    pub phone_number: String,
    /// The template the gateway named ("verification_code", "lookup_summary", "unbind_outcome").
    #[serde(default)]
    pub template: String,
    /// The params the gateway sent with it.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The verification code, for `verification_code` messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The language the text is in ("zh", "en").
    #[serde(default)]
    pub language: String,
    pub text: String,
    /// RFC 3339.
    pub sent_at: String,
}

impl SmsRecord {
    /// The verification code this message carries: its own field, or (for lines written before
    /// it had one) the digits after "code is" in the text.
    pub fn verification_code(&self) -> Option<String> {
        self.code.clone().or_else(|| code_in_sms(&self.text))
    }
}

/// The verification code in an SMS text: the digits after "code is" (as the
/// `verification_code` template writes it; case and a colon do not matter).
pub fn code_in_sms(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("code is")? + "code is".len();
    let digits: String = text
        .get(start..)?
        .trim_start_matches([' ', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// Reads the SMS file (one JSON object a line; blank lines are skipped). A missing file holds no
/// messages yet.
pub fn read_sms_file(path: &Path) -> anyhow::Result<Vec<SmsRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the SMS file {}", path.display()));
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("in the SMS file {}, line {}", path.display(), index + 1))
        })
        .collect()
}

/// What the simulated registry knows and where it "sends" SMS.
#[derive(Clone, Debug)]
pub struct SimulatedRegistryOptions {
    pub subscribers: Vec<Subscriber>,
    /// Every SMS is appended here as a JSON line (the file is created if missing).
    pub sms_file: PathBuf,
    /// Also print each SMS on stdout, as the simulated handset's screen.
    pub echo_sms: bool,
}

/// A running simulated registry.
pub struct SimulatedRegistry {
    addr: SocketAddr,
    /// Whether it serves TLS (the endpoint is then `https://`).
    tls: bool,
    state: Arc<RegistryState>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Shows the address and counters only: the subscribers' numbers stay out of debug output.
impl std::fmt::Debug for SimulatedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedRegistry")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("subscribers", &self.state.by_number.len())
            .field("sms_file", &self.state.sms_file)
            .finish_non_exhaustive()
    }
}

impl SimulatedRegistry {
    /// Serves the registry on `listener`, in plain text, until [`SimulatedRegistry::shutdown`].
    pub async fn start(
        options: SimulatedRegistryOptions,
        listener: TcpListener,
    ) -> anyhow::Result<SimulatedRegistry> {
        Self::start_with_tls(options, listener, None).await
    }

    /// Like [`SimulatedRegistry::start`], but with `Some(tls)` it serves TLS: its identity (which
    /// must be set), and with `client_ca_root` client certificates signed by that CA are required.
    /// See [`SimulatedRegistry::endpoint`] for the name clients should dial.
    pub async fn start_with_tls(
        options: SimulatedRegistryOptions,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
    ) -> anyhow::Result<SimulatedRegistry> {
        Self::start_with_templates(options, listener, tls, SmsTemplates::default()).await
    }

    /// Like [`SimulatedRegistry::start_with_tls`], writing SMS from `templates`.
    pub async fn start_with_templates(
        options: SimulatedRegistryOptions,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        templates: SmsTemplates,
    ) -> anyhow::Result<SimulatedRegistry> {
        let addr = listener
            .local_addr()
            .context("reading the registry's listening address")?;
        let serves_tls = tls.is_some();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| {
                // The source says what is wrong; the transport error itself only says
                // "transport error".
                let detail = std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string());
                anyhow::anyhow!("the registry's TLS configuration: {detail}")
            })?;
        }
        // Create the SMS file now, so a bad path fails the start rather than the first SMS, and
        // so the file exists for whoever tails it.
        open_for_append(&options.sms_file)
            .await
            .with_context(|| format!("opening the SMS file {}", options.sms_file.display()))?;

        let mut by_number = HashMap::with_capacity(options.subscribers.len());
        for subscriber in options.subscribers {
            by_number.insert(subscriber.phone_number.expose().to_owned(), subscriber);
        }
        let state = Arc::new(RegistryState {
            by_number,
            templates,
            sms_file: options.sms_file,
            echo_sms: options.echo_sms,
            sms_lock: Mutex::new(()),
            verify_calls: AtomicU64::new(0),
            sms_calls: AtomicU64::new(0),
            next_message: AtomicU64::new(1),
        });

        let (shutdown, signal) = oneshot::channel::<()>();
        let service = SubscriberRegistryServer::new(RegistryService {
            state: Arc::clone(&state),
        });
        let router = builder.add_service(service);
        let task = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = signal.await;
                })
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "simulated registry server failed");
            }
        });
        tracing::info!(%addr, tls = serves_tls, "simulated subscriber registry serving");
        Ok(SimulatedRegistry {
            addr,
            tls: serves_tls,
            state,
            shutdown,
            task,
        })
    }

    /// `http://IP:PORT`, with loopback standing in for an unspecified listening address. With
    /// TLS, `https://localhost:PORT` for loopback and unspecified addresses (the name the
    /// development registry certificate carries), else `https://IP:PORT`.
    pub fn endpoint(&self) -> String {
        crate::tls::endpoint_for(self.addr, self.tls)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `VerifySubscriber` calls so far.
    pub fn verify_calls(&self) -> u64 {
        self.state.verify_calls.load(Ordering::Relaxed)
    }

    /// `SendSms` calls so far.
    pub fn sms_calls(&self) -> u64 {
        self.state.sms_calls.load(Ordering::Relaxed)
    }

    /// Stops serving; in-flight calls finish first.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "simulated registry task ended abnormally");
        }
    }
}

struct RegistryState {
    by_number: HashMap<String, Subscriber>,
    templates: SmsTemplates,
    sms_file: PathBuf,
    echo_sms: bool,
    /// Serializes appends, so concurrent messages never interleave within a line.
    sms_lock: Mutex<()>,
    verify_calls: AtomicU64,
    sms_calls: AtomicU64,
    next_message: AtomicU64,
}

struct RegistryService {
    state: Arc<RegistryState>,
}

#[tonic::async_trait]
impl SubscriberRegistry for RegistryService {
    async fn verify_subscriber(
        &self,
        request: Request<VerifySubscriberRequest>,
    ) -> Result<Response<VerifySubscriberResponse>, Status> {
        self.state.verify_calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let offered = request.id_last_six.to_ascii_uppercase();
        let subscriber = self.state.by_number.get(&request.phone_number);
        // Compare against a stand-in when the number is unknown, so an unknown number costs the
        // same work as a known one with the wrong characters.
        // The time taken depends on the lengths only, never on where the characters differ (which
        // would let a caller who can time the answer guess them one at a time).
        let expected = subscriber.map_or("\0\0\0\0\0\0", |s| s.id_last_six.expose());
        let same: bool = offered.as_bytes().ct_eq(expected.as_bytes()).into();
        let holder_since = match subscriber {
            Some(s) if same => Some(timestamp_from_ms(s.holder_since.timestamp_millis())),
            _ => None,
        };
        tracing::debug!(matched = holder_since.is_some(), "VerifySubscriber");
        Ok(Response::new(VerifySubscriberResponse {
            matched: holder_since.is_some(),
            holder_since,
        }))
    }

    async fn send_sms(
        &self,
        request: Request<SendSmsRequest>,
    ) -> Result<Response<SendSmsResponse>, Status> {
        let state = &self.state;
        state.sms_calls.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let Some(phone) = exact_e164(&request.phone_number) else {
            return Err(Status::invalid_argument(
                "phone_number must be a mobile number in E.164 form, e.g. +8613800138000",
            ));
        };
        // A number the registry does not hold still gets its SMS (the gateway sends summaries
        // only to verified holders), in the default language.
        let language = state
            .by_number
            .get(&request.phone_number)
            .map(|s| s.language)
            .unwrap_or_default();
        let text = state
            .templates
            .render(language, &request.template, &request.params)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;

        let code = (request.template == "verification_code")
            .then(|| request.params.get("code").cloned())
            .flatten();
        let record = SmsRecord {
            phone_number: request.phone_number,
            template: request.template.clone(),
            params: request.params.into_iter().collect(),
            code,
            language: language.code().to_owned(),
            text,
            sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        let mut line = serde_json::to_string(&record)
            .map_err(|_| Status::internal("could not record the SMS"))?;
        line.push('\n');
        {
            let _guard = state.sms_lock.lock().await;
            append(&state.sms_file, line.as_bytes()).await.map_err(|error| {
                tracing::error!(%error, file = %state.sms_file.display(), "could not append to the SMS file");
                Status::internal("could not record the SMS")
            })?;
            if state.echo_sms {
                // The simulated handset's screen, not a log line: it shows what the holder would
                // read, code included.
                println!("SMS to {}: {}", phone.masked(), record.text);
            }
        }

        let n = state.next_message.fetch_add(1, Ordering::Relaxed);
        let message_id = format!("sms-{n:06}-{:08x}", rand::random::<u32>());
        tracing::debug!(template = %request.template, %message_id, "SendSms");
        Ok(Response::new(SendSmsResponse { message_id }))
    }
}

async fn open_for_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
}

/// Appends and flushes, reopening the file each time so it may be moved or truncated while the
/// registry runs.
async fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = open_for_append(path).await?;
    file.write_all(bytes).await?;
    file.flush().await
}

/// "2024-03-01", or an RFC 3339 time; a TOML date or date-time written without quotes is also
/// accepted.
fn parse_holder_since(value: &toml::Value) -> anyhow::Result<DateTime<Utc>> {
    let text = match value {
        toml::Value::String(s) => s.trim().to_owned(),
        toml::Value::Datetime(dt) => dt.to_string(),
        _ => bail!("must be a date like \"2024-03-01\" or an RFC 3339 time"),
    };
    if let Ok(date) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            anyhow::anyhow!(
                "`{}` is neither a date like \"2024-03-01\" nor an RFC 3339 time",
                truncate(&text, 40)
            )
        })
}

/// A date when the time is midnight UTC, else RFC 3339: what a person would write.
fn format_holder_since(t: DateTime<Utc>) -> String {
    if t.time() == chrono::NaiveTime::MIN {
        t.format("%Y-%m-%d").to_string()
    } else {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

/// The number if `text` is a mobile number written in E.164 form exactly, as the gateway sends it.
fn exact_e164(text: &str) -> Option<E164> {
    E164::parse_canonical(text).ok()
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// At most `max` characters, so a caller cannot make an error message arbitrarily large.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dates_times_and_normalises_x() {
        let text = r#"
            [[subscribers]]
            phone_number = "+8613800138000"
            id_last_six = "12345x"
            holder_since = "2024-03-01"

            [[subscribers]]
            phone_number = "+8613900139000"
            id_last_six = "154321"
            holder_since = "2019-07-15T08:30:00+08:00"

            [[subscribers]]
            phone_number = "+8613700137000"
            id_last_six = "010001"
            holder_since = 2020-01-02
        "#;
        let subscribers = parse_subscribers(text).expect("a valid file");
        assert_eq!(subscribers.len(), 3);
        assert_eq!(subscribers[0].id_last_six.expose(), "12345X");
        assert_eq!(
            subscribers[0].holder_since.to_rfc3339(),
            "2024-03-01T00:00:00+00:00"
        );
        assert_eq!(
            subscribers[1].holder_since.to_rfc3339(),
            "2019-07-15T00:30:00+00:00"
        );
        assert_eq!(
            subscribers[2].holder_since.to_rfc3339(),
            "2020-01-02T00:00:00+00:00"
        );
    }

    #[test]
    fn unknown_keys_are_errors_that_do_not_quote_the_line() {
        let text = "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"12345X\"\nholder_since = \"2024-03-01\"\nnickname = \"zhang\"\n";
        let error = format!("{:#}", parse_subscribers(text).expect_err("an error"));
        assert!(error.contains("nickname"), "{error}");
        assert!(error.contains("line 5"), "{error}");
        assert!(!error.contains("12345X"), "{error}");
        assert!(!error.contains("13800138000"), "{error}");
    }

    #[test]
    fn invalid_entries_are_errors_without_secrets() {
        let bad_id = "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"12345Y\"\nholder_since = \"2024-03-01\"\n";
        let error = format!("{:#}", parse_subscribers(bad_id).expect_err("an error"));
        assert!(error.contains("subscriber 1: id_last_six"), "{error}");
        assert!(!error.contains("12345Y"), "{error}");
        // No 0th or 32nd day of a month.
        for day in ["00012X", "32012X"] {
            let bad = bad_id.replace("12345Y", day);
            let error = format!("{:#}", parse_subscribers(&bad).expect_err("an error"));
            assert!(error.contains("subscriber 1: id_last_six"), "{error}");
            assert!(!error.contains(day), "{error}");
        }

        let bad_number = "[[subscribers]]\nphone_number = \"13800138000\"\nid_last_six = \"123456\"\nholder_since = \"2024-03-01\"\n";
        assert!(parse_subscribers(bad_number).is_err());

        let bad_date = "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"123456\"\nholder_since = \"last year\"\n";
        let error = format!("{:#}", parse_subscribers(bad_date).expect_err("an error"));
        assert!(error.contains("holder_since"), "{error}");

        let duplicate = "[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"123456\"\nholder_since = \"2024-03-01\"\n[[subscribers]]\nphone_number = \"+8613800138000\"\nid_last_six = \"154321\"\nholder_since = \"2024-03-01\"\n";
        let error = format!("{:#}", parse_subscribers(duplicate).expect_err("an error"));
        assert!(error.contains("138****8000"), "{error}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("subscribers.toml");
        std::fs::write(&path, "[[subscribers]]\nphone_number = 5\n").expect("written");
        let error = format!("{:#}", load_subscribers(&path).expect_err("an error"));
        assert!(error.contains("subscribers.toml"), "{error}");
        let missing = dir.path().join("missing.toml");
        let error = format!("{:#}", load_subscribers(&missing).expect_err("an error"));
        assert!(error.contains("missing.toml"), "{error}");
    }

    #[test]
    fn write_then_load_round_trips() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("subscribers.toml");
        let subscribers = vec![
            Subscriber::new(
                "+8613800138000",
                "12345X",
                parse_holder_since(&toml::Value::String("2024-03-01".into())).expect("a date"),
            )
            .expect("a subscriber"),
            Subscriber::new(
                "+8613900139000",
                "154321",
                parse_holder_since(&toml::Value::String("2019-07-15T08:30:00Z".into()))
                    .expect("a time"),
            )
            .expect("a subscriber"),
        ];
        write_subscribers(&path, &subscribers).expect("written");
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(text.contains("holder_since = \"2024-03-01\""), "{text}");
        assert_eq!(load_subscribers(&path).expect("loads"), subscribers);
    }

    #[test]
    fn subscribers_are_written_as_the_gateway_takes_them_and_never_shown() {
        assert!(Subscriber::new("+8613800138000", "12345x", Utc::now()).is_some());
        // A bare national number, a landline, ID characters with a 32nd day: not subscribers.
        assert!(Subscriber::new("13800138000", "12345X", Utc::now()).is_none());
        assert!(Subscriber::new("+861062345678", "12345X", Utc::now()).is_none());
        assert!(Subscriber::new("+8613800138000", "32345X", Utc::now()).is_none());
        let subscriber = Subscriber::new("+8613800138000", "12345X", Utc::now()).expect("valid");
        let shown = format!("{subscriber:?}");
        assert!(
            !shown.contains("12345X") && !shown.contains("13800138000"),
            "{shown}"
        );
    }

    #[test]
    fn sms_file_reading_skips_blank_lines_and_names_bad_lines() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("sms.jsonl");
        assert!(read_sms_file(&path).expect("missing is empty").is_empty());
        std::fs::write(
            &path,
            "{\"phone_number\":\"+8613800138000\",\"text\":\"hi\",\"sent_at\":\"2026-01-01T00:00:00Z\"}\n\nnot json\n",
        )
        .expect("written");
        let error = format!("{:#}", read_sms_file(&path).expect_err("an error"));
        assert!(error.contains("line 3"), "{error}");
    }
}
