{#- Bookings, revenue and partner-hotel points per loyalty tier: the travel source's bookings joined
    across sources to the loyalty programme's members (Debezium) and the partner hotels' current
    rate sheet (daily snapshot drops). Customers who are not members count under tier 'none'.
    Cancelled bookings count nowhere; points_earnable is what the bookings' nights at partner
    hotels earn at the sheet's points per night (the highest of the hotel's room types). -#}
with members as (
    select customer_id, tier, points_balance
    from {{ source('loyalty', 'members') }}
),

partner_hotels as (
    select hotel_id, max(points_per_night) as points_per_night
    from {{ source('loyalty', 'hotel_rates') }}
    group by hotel_id
),

bookings as (
    select
        b.booking_id,
        b.customer_id,
        b.nights,
        {{ to_reporting_currency('b.amount', 'b.currency') }} as amount_eur,
        coalesce(m.tier, 'none') as tier,
        p.points_per_night
    from {{ source('travel', 'bookings') }} as b
    left join members as m on m.customer_id = b.customer_id
    left join partner_hotels as p on p.hotel_id = b.hotel_id
    where b.status <> 'cancelled'
),

member_stats as (
    select tier, count(*) as members, sum(points_balance) as points_balance
    from members
    group by tier
),

booked as (
    select
        tier,
        count(distinct customer_id) as booking_customers,
        count(*) as bookings,
        sum(nights) as room_nights,
        sum(amount_eur) as revenue_eur,
        sum(case when points_per_night is not null then 1 else 0 end) as partner_hotel_bookings,
        sum(case when points_per_night is not null then nights else 0 end) as partner_room_nights,
        sum(coalesce(points_per_night, 0) * nights) as points_earnable
    from bookings
    group by tier
),

tiers as (
    select tier from member_stats
    union
    select tier from booked
)

select
    t.tier,
    cast(coalesce(m.members, 0) as bigint) as members,
    cast(coalesce(m.points_balance, 0) as bigint) as points_balance,
    cast(coalesce(b.booking_customers, 0) as bigint) as booking_customers,
    cast(coalesce(b.bookings, 0) as bigint) as bookings,
    cast(coalesce(b.room_nights, 0) as bigint) as room_nights,
    cast(coalesce(b.revenue_eur, 0) as decimal(18, 2)) as revenue_eur,
    cast(round({{ safe_ratio('b.revenue_eur', 'b.bookings') }}, 2) as decimal(18, 2)) as average_booking_value_eur,
    cast(coalesce(b.partner_hotel_bookings, 0) as bigint) as partner_hotel_bookings,
    cast(coalesce(b.partner_room_nights, 0) as bigint) as partner_room_nights,
    cast(coalesce(b.points_earnable, 0) as bigint) as points_earnable
from tiers as t
left join member_stats as m on m.tier = t.tier
left join booked as b on b.tier = t.tier
