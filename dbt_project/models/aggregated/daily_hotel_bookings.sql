{{ config(partitioned_by=['month(activity_date)']) }}
{#- Daily bookings, room nights and revenue per hotel and currency, with the cancellations and
    confirmation speed recorded in the booking status history that day. -#}
with bookings as (
    select
        booking_id,
        hotel_id,
        promotion_id,
        nights,
        amount,
        currency,
        status,
        created_at,
        cast(created_at as date) as booking_date
    from {{ source('travel', 'bookings') }}
),

first_confirmation as (
    select booking_id, min(changed_at) as confirmed_at
    from {{ source('travel', 'booking_status_history') }}
    where new_status = 'confirmed'
    group by booking_id
),

created as (
    select
        b.booking_date as activity_date,
        b.hotel_id,
        b.currency,
        count(*) as bookings,
        sum(case when b.status = 'cancelled' then 1 else 0 end) as cancelled_bookings,
        sum(case when b.promotion_id is not null then 1 else 0 end) as promotion_bookings,
        sum(case when b.status <> 'cancelled' then b.nights else 0 end) as room_nights,
        sum(b.amount) as gross_revenue,
        sum(case when b.status <> 'cancelled' then b.amount else 0 end) as net_revenue,
        avg({{ seconds_between('b.created_at', 'c.confirmed_at') }}) / 3600.0 as avg_hours_to_confirm
    from bookings as b
    left join first_confirmation as c on c.booking_id = b.booking_id
    group by b.booking_date, b.hotel_id, b.currency
),

cancellations as (
    select
        cast(h.changed_at as date) as activity_date,
        b.hotel_id,
        b.currency,
        count(*) as cancellations_recorded
    from {{ source('travel', 'booking_status_history') }} as h
    inner join bookings as b on b.booking_id = h.booking_id
    where h.new_status = 'cancelled'
    group by cast(h.changed_at as date), b.hotel_id, b.currency
),

activity_days as (
    select activity_date, hotel_id, currency from created
    union
    select activity_date, hotel_id, currency from cancellations
)

select
    d.activity_date,
    d.hotel_id,
    h.name as hotel_name,
    h.city,
    h.country,
    h.region,
    d.currency,
    cast(coalesce(c.bookings, 0) as bigint) as bookings,
    cast(coalesce(c.cancelled_bookings, 0) as bigint) as cancelled_bookings,
    cast(coalesce(c.promotion_bookings, 0) as bigint) as promotion_bookings,
    cast(coalesce(c.room_nights, 0) as bigint) as room_nights,
    cast(coalesce(c.gross_revenue, 0) as decimal(18, 2)) as gross_revenue,
    cast(coalesce(c.net_revenue, 0) as decimal(18, 2)) as net_revenue,
    {{ to_reporting_currency('coalesce(c.net_revenue, 0)', 'd.currency') }} as net_revenue_eur,
    cast(round({{ safe_ratio('c.net_revenue', 'c.room_nights') }}, 2) as decimal(18, 2)) as average_daily_rate,
    cast(round(c.avg_hours_to_confirm, 2) as double) as avg_hours_to_confirm,
    cast(coalesce(x.cancellations_recorded, 0) as bigint) as cancellations_recorded
from activity_days as d
left join created as c
    on c.activity_date = d.activity_date and c.hotel_id = d.hotel_id and c.currency = d.currency
left join cancellations as x
    on x.activity_date = d.activity_date and x.hotel_id = d.hotel_id and x.currency = d.currency
left join {{ source('travel', 'hotels') }} as h on h.hotel_id = d.hotel_id
