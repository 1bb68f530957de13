{#- Points earned and redeemed per day (UTC) and loyalty tier: the loyalty app's event stream
    (Firehose, load events) joined to the members (Debezium) for the tier and, across sources, to the
    travel bookings the points were earned at. A customer who is no longer a member counts under
    tier 'none'. booked_revenue_eur is the revenue of the bookings that earned points that day,
    each booking once however many of its events fall in the group. -#}
with events as (
    select
        e.event_id,
        e.customer_id,
        e.kind,
        e.points,
        e.booking_id,
        {{ utc_date('e.event_time') }} as activity_date,
        coalesce(m.tier, 'none') as tier
    from {{ source('loyalty', 'points_events') }} as e
    left join {{ source('loyalty', 'members') }} as m on m.customer_id = e.customer_id
),

moved as (
    select
        activity_date,
        tier,
        count(distinct customer_id) as active_members,
        sum(case when kind = 'earn' then 1 else 0 end) as earn_events,
        sum(case when kind = 'redeem' then 1 else 0 end) as redeem_events,
        sum(case when kind = 'earn' then points else 0 end) as points_earned,
        sum(case when kind = 'redeem' then points else 0 end) as points_redeemed,
        sum(case when kind = 'earn' and booking_id is not null then points else 0 end) as points_earned_at_bookings,
        count(distinct case when kind = 'earn' then booking_id end) as bookings_earning
    from events
    group by activity_date, tier
),

booked as (
    select
        g.activity_date,
        g.tier,
        sum({{ to_reporting_currency('b.amount', 'b.currency') }}) as booked_revenue_eur
    from (select distinct activity_date, tier, booking_id from events where kind = 'earn' and booking_id is not null) as g
    inner join {{ source('travel', 'bookings') }} as b on b.booking_id = g.booking_id
    group by g.activity_date, g.tier
)

select
    m.activity_date,
    m.tier,
    cast(m.active_members as bigint) as active_members,
    cast(m.earn_events as bigint) as earn_events,
    cast(m.redeem_events as bigint) as redeem_events,
    cast(m.points_earned as bigint) as points_earned,
    cast(m.points_redeemed as bigint) as points_redeemed,
    cast(m.points_earned - m.points_redeemed as bigint) as net_points,
    cast(m.points_earned_at_bookings as bigint) as points_earned_at_bookings,
    cast(m.bookings_earning as bigint) as bookings_earning,
    cast(coalesce(b.booked_revenue_eur, 0) as decimal(18, 2)) as booked_revenue_eur
from moved as m
left join booked as b on b.activity_date = m.activity_date and b.tier = m.tier
