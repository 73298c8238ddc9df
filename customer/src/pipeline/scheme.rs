//! Erasure schemes: the default `k+m` for a number of suppliers, and parsing
//! a scheme the user gives.

use common::manifest::{MAX_POSITIONS, Scheme};

use super::PipelineError;

/// The default scheme for `suppliers` suppliers (one fragment position each).
///
/// Up to eight suppliers the table of DESIGN.md §5 applies: 1+0, 1+1, 2+1,
/// 2+2, 3+2, 4+2, 4+3, 5+3. Beyond that, `k = ceil(N * 5 / 8)` and
/// `m = N - k`, so a block survives the loss of about three suppliers in
/// eight. Zero suppliers, or more than [`MAX_POSITIONS`], are refused.
pub fn default_scheme(suppliers: u32) -> Result<Scheme, PipelineError> {
    let (data, parity) = match suppliers {
        1 => (1, 0),
        2 => (1, 1),
        3 => (2, 1),
        4 => (2, 2),
        5 => (3, 2),
        6 => (4, 2),
        7 => (4, 3),
        8 => (5, 3),
        n if (9..=MAX_POSITIONS).contains(&n) => {
            let data = (n * 5).div_ceil(8);
            (data, n - data)
        }
        _ => return Err(PipelineError::Suppliers { suppliers }),
    };
    Ok(Scheme { data, parity })
}

/// Parses a scheme written `k+m` (for example `4+2`; surrounding whitespace is
/// ignored) and checks it against the number of suppliers: `k ≥ 1`,
/// `k + m ≤ 64` and `k + m = suppliers`.
pub fn parse_scheme(text: &str, suppliers: u32) -> Result<Scheme, PipelineError> {
    let bad = |reason| PipelineError::Scheme {
        scheme: text.to_owned(),
        reason,
    };
    let syntax = "expected k+m with decimal numbers, e.g. 4+2";
    let (data, parity) = text.trim().split_once('+').ok_or_else(|| bad(syntax))?;
    let number = |part: &str| -> Result<u32, PipelineError> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(syntax));
        }
        part.parse()
            .map_err(|_| bad("k+m must be at most 64 fragments"))
    };
    let scheme = Scheme {
        data: number(data)?,
        parity: number(parity)?,
    };
    check(&scheme).map_err(bad)?;
    if scheme.positions() != suppliers {
        return Err(PipelineError::SchemeSuppliers { scheme, suppliers });
    }
    Ok(scheme)
}

/// Checks a scheme's bounds without overflowing on hostile numbers.
pub(super) fn check(scheme: &Scheme) -> Result<(), &'static str> {
    if scheme.data == 0 {
        return Err("k must be at least 1");
    }
    match scheme.data.checked_add(scheme.parity) {
        Some(positions) if positions <= MAX_POSITIONS => Ok(()),
        _ => Err("k+m must be at most 64 fragments"),
    }
}

/// [`check`], as a pipeline error naming the scheme.
pub(super) fn checked(scheme: Scheme) -> Result<Scheme, PipelineError> {
    check(&scheme).map_err(|reason| PipelineError::Scheme {
        scheme: scheme.to_string(),
        reason,
    })?;
    Ok(scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(data: u32, parity: u32) -> Scheme {
        Scheme { data, parity }
    }

    #[test]
    fn defaults_follow_the_design_table_then_five_eighths() {
        let table = [
            (1, scheme(1, 0)),
            (2, scheme(1, 1)),
            (3, scheme(2, 1)),
            (4, scheme(2, 2)),
            (5, scheme(3, 2)),
            (6, scheme(4, 2)),
            (7, scheme(4, 3)),
            (8, scheme(5, 3)),
            (9, scheme(6, 3)),
            (10, scheme(7, 3)),
            (16, scheme(10, 6)),
            (64, scheme(40, 24)),
        ];
        for (n, expected) in table {
            assert_eq!(default_scheme(n).unwrap(), expected, "{n} suppliers");
        }
        for n in 1..=MAX_POSITIONS {
            let s = default_scheme(n).unwrap();
            assert_eq!(s.positions(), n);
            assert!(s.data >= 1 && s.data >= s.parity);
        }
        for n in [0, 65, u32::MAX] {
            let err = default_scheme(n).unwrap_err();
            assert!(matches!(err, PipelineError::Suppliers { suppliers } if suppliers == n));
            assert!(err.to_string().contains("1 to 64"), "{err}");
        }
    }

    #[test]
    fn user_schemes_parse() {
        assert_eq!(parse_scheme("4+2", 6).unwrap(), scheme(4, 2));
        assert_eq!(parse_scheme(" 5+3\n", 8).unwrap(), scheme(5, 3));
        assert_eq!(parse_scheme("1+0", 1).unwrap(), scheme(1, 0));
        assert_eq!(parse_scheme("64+0", 64).unwrap(), scheme(64, 0));
        assert_eq!(parse_scheme("01+1", 2).unwrap(), scheme(1, 1));
    }

    #[test]
    fn bad_user_schemes_say_why() {
        let reason = |text: &str, n| match parse_scheme(text, n).unwrap_err() {
            PipelineError::Scheme { scheme, reason } => {
                assert_eq!(scheme, text);
                reason
            }
            other => panic!("{text}: unexpected {other}"),
        };
        for text in [
            "", "4", "4+", "+2", "4-2", "a+b", "4++2", "4+2+1", "-1+2", "4 + 2",
        ] {
            assert!(reason(text, 6).starts_with("expected k+m"), "{text}");
        }
        assert_eq!(reason("0+2", 2), "k must be at least 1");
        assert_eq!(reason("60+10", 70), "k+m must be at most 64 fragments");
        assert_eq!(
            reason("4294967295+1", 6),
            "k+m must be at most 64 fragments"
        );
        assert_eq!(
            reason("99999999999+1", 6),
            "k+m must be at most 64 fragments"
        );

        let err = parse_scheme("4+2", 8).unwrap_err();
        assert!(matches!(
            err,
            PipelineError::SchemeSuppliers { scheme: s, suppliers: 8 } if s == scheme(4, 2)
        ));
        assert_eq!(
            err.to_string(),
            "scheme 4+2 stores 6 fragments per block, but there are 8 suppliers"
        );
        assert_eq!(
            parse_scheme("0+2", 2).unwrap_err().to_string(),
            "invalid erasure scheme \"0+2\": k must be at least 1"
        );
    }
}
