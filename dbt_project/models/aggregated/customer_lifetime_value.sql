{#- One row per customer: profile (PII, governed downstream) and lifetime value in the reporting
    currency. Revenue counts bookings that were not cancelled; payments are captured minus refunded. -#}
with bookings as (
    select
        booking_id,
        customer_id,
        nights,
        status,
        cast(created_at as date) as booking_date,
        {{ to_reporting_currency('amount', 'currency') }} as amount_eur
    from {{ source('travel', 'bookings') }}
),

booking_stats as (
    select
        customer_id,
        count(*) as bookings,
        sum(case when status = 'cancelled' then 1 else 0 end) as cancelled_bookings,
        sum(case when status <> 'cancelled' then nights else 0 end) as room_nights,
        sum(case when status <> 'cancelled' then amount_eur else 0 end) as lifetime_revenue_eur,
        min(booking_date) as first_booking_date,
        max(booking_date) as last_booking_date
    from bookings
    group by customer_id
),

payment_stats as (
    select
        b.customer_id,
        sum(case when p.status = 'captured' then {{ to_reporting_currency('p.amount', 'p.currency') }} else 0 end) as paid_eur,
        sum(case when p.status = 'refunded' then {{ to_reporting_currency('p.amount', 'p.currency') }} else 0 end) as refunded_eur
    from {{ source('travel', 'payments') }} as p
    inner join bookings as b on b.booking_id = p.booking_id
    group by b.customer_id
)

select
    c.customer_id,
    c.first_name,
    c.last_name,
    c.email,
    c.phone,
    c.date_of_birth,
    c.country,
    c.marketing_opt_in,
    cast(c.created_at as date) as customer_since,
    s.first_booking_date,
    s.last_booking_date,
    cast(coalesce(s.bookings, 0) as bigint) as bookings,
    cast(coalesce(s.cancelled_bookings, 0) as bigint) as cancelled_bookings,
    cast(coalesce(s.room_nights, 0) as bigint) as room_nights,
    cast(coalesce(s.lifetime_revenue_eur, 0) as decimal(18, 2)) as lifetime_revenue_eur,
    cast(round({{ safe_ratio('s.lifetime_revenue_eur', 's.bookings - s.cancelled_bookings') }}, 2) as decimal(18, 2))
        as average_booking_value_eur,
    cast(coalesce(p.paid_eur, 0) as decimal(18, 2)) as paid_eur,
    cast(coalesce(p.refunded_eur, 0) as decimal(18, 2)) as refunded_eur,
    cast({{ dbt.datediff('cast(c.created_at as date)', 's.last_booking_date', 'day') }} as bigint) as tenure_days
from {{ source('travel', 'customers') }} as c
left join booking_stats as s on s.customer_id = c.customer_id
left join payment_stats as p on p.customer_id = c.customer_id
