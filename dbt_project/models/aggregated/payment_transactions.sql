{{ config(partitioned_by=['month(paid_date)']) }}
{#- One row per payment with its booking, customer and hotel: the table finance reconciles.
    Carries the card number (PII), which only masked consumer datasets expose. -#}
select
    p.payment_id,
    p.booking_id,
    b.customer_id,
    b.hotel_id,
    h.name as hotel_name,
    p.amount,
    p.currency,
    {{ to_reporting_currency('p.amount', 'p.currency') }} as amount_eur,
    p.method,
    p.card_number,
    p.region,
    p.status,
    {{ lake_timestamp('p.paid_at') }} as paid_at,
    cast(p.paid_at as date) as paid_date,
    b.status as booking_status,
    cast(round({{ seconds_between('b.created_at', 'p.paid_at') }} / 3600.0, 2) as double) as hours_booking_to_payment
from {{ source('travel', 'payments') }} as p
left join {{ source('travel', 'bookings') }} as b on b.booking_id = p.booking_id
left join {{ source('travel', 'hotels') }} as h on h.hotel_id = b.hotel_id
