//! Text the way .NET writes it, where Ocelot's responses show .NET formatting:
//! round-trip dates (`"o"`), doubles (`Retry-After`), and `string.Format`
//! for `QuotaMessage`.

/// A UTC instant (microseconds since the Unix epoch) as .NET's
/// `DateTime.ToString("o")` writes it: `2026-01-01T00:00:01.0000000Z`.
pub(crate) fn round_trip_date(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        frac * 10
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A double as .NET's `double.ToString(CultureInfo.InvariantCulture)`
/// writes it: shortest round-trip digits, scientific below 1E-05.
pub(crate) fn dotnet_double(value: f64) -> String {
    if value != 0.0 && value.abs() < 1e-4 {
        // Rust: "1.2e-5"; .NET: "1.2E-05".
        let sci = format!("{value:e}");
        if let Some((mantissa, exp)) = sci.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("+", exp),
            };
            return format!("{mantissa}E{sign}{digits:0>2}");
        }
        return sci;
    }
    format!("{value}")
}

/// .NET `string.Format(format, args)` for the `{0}`, `{1}` … items of a quota
/// message (`{{`/`}}` are literal braces; alignment and format parts are
/// accepted and ignored). An item that .NET would reject is kept as written.
pub(crate) fn dotnet_format(format: &str, args: &[&str]) -> String {
    let mut out = String::with_capacity(format.len() + 16);
    let mut rest = format;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let item = &tail[1..end];
                let index = item.split([',', ':']).next().unwrap_or("").trim();
                if let Some(arg) = index.parse::<usize>().ok().and_then(|i| args.get(i)) {
                    out.push_str(arg);
                    rest = &tail[end + 1..];
                    continue;
                }
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_format() {
        assert_eq!(round_trip_date(0), "1970-01-01T00:00:00.0000000Z");
        assert_eq!(
            round_trip_date(1_767_225_601_000_000),
            "2026-01-01T00:00:01.0000000Z"
        );
        assert_eq!(
            round_trip_date(951_827_696_123_456),
            "2000-02-29T12:34:56.1234560Z"
        );
        assert_eq!(
            round_trip_date(4_107_542_399_999_999),
            "2100-02-28T23:59:59.9999990Z"
        );
    }

    #[test]
    fn doubles_like_dotnet() {
        assert_eq!(dotnet_double(-1.0), "-1");
        assert_eq!(dotnet_double(0.0), "0");
        assert_eq!(dotnet_double(1.0), "1");
        assert_eq!(dotnet_double(0.97), "0.97");
        assert_eq!(dotnet_double(0.123456), "0.123456");
        assert_eq!(dotnet_double(12.5), "12.5");
        assert_eq!(dotnet_double(0.0001), "0.0001");
        assert_eq!(dotnet_double(0.000012), "1.2E-05");
        assert_eq!(dotnet_double(0.000001), "1E-06");
    }

    #[test]
    fn quota_messages() {
        let default = "API calls quota exceeded! Maximum admitted {0} per {1}.";
        assert_eq!(
            dotnet_format(default, &["3", "1s"]),
            "API calls quota exceeded! Maximum admitted 3 per 1s."
        );
        assert_eq!(
            dotnet_format("{1}/{0} {{x}} {0,5} {1:G}", &["3", "1s"]),
            "1s/3 {x} 3 1s"
        );
        assert_eq!(dotnet_format("Exceeding!", &["3", "1s"]), "Exceeding!");
        assert_eq!(
            dotnet_format("odd {2} { } }", &["3", "1s"]),
            "odd {2} { } }"
        );
    }
}
