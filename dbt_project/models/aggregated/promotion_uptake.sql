{#- Per promotion code: redemptions, revenue and discount given, and uptake: the share of the
    bookings eligible for the code (created in its validity window at a hotel in its region) that
    used it. A null region means every region, a null valid_to an open-ended code (campaign_days is
    then null). Cancelled bookings count nowhere. -#}
with promotions as (
    select promotion_id, code, discount_pct, region, valid_from, valid_to
    from {{ source('travel', 'promotions') }}
),

bookings as (
    select
        b.booking_id,
        b.customer_id,
        b.promotion_id,
        b.created_at,
        b.amount,
        b.currency,
        h.region as hotel_region
    from {{ source('travel', 'bookings') }} as b
    left join {{ source('travel', 'hotels') }} as h on h.hotel_id = b.hotel_id
    where b.status <> 'cancelled'
),

eligible as (
    select p.promotion_id, count(*) as eligible_bookings
    from promotions as p
    inner join bookings as b
        on b.created_at >= p.valid_from
        and (p.valid_to is null or b.created_at < {{ add_days('p.valid_to', 1) }})
        and (p.region is null or p.region = b.hotel_region)
    group by p.promotion_id
),

redeemed as (
    select
        b.promotion_id,
        count(*) as redemptions,
        count(distinct b.customer_id) as customers,
        sum({{ to_reporting_currency('b.amount', 'b.currency') }}) as revenue_eur,
        {#- amounts are after discount: discount = amount * pct / (100 - pct) -#}
        sum({{ to_reporting_currency(
            'cast(b.amount as double) * cast(p.discount_pct as double) / (100 - cast(p.discount_pct as double))',
            'b.currency') }}) as discount_eur
    from bookings as b
    inner join promotions as p on p.promotion_id = b.promotion_id
    group by b.promotion_id
)

select
    p.promotion_id,
    p.code,
    p.discount_pct,
    p.region,
    p.valid_from,
    p.valid_to,
    cast({{ dbt.datediff('p.valid_from', 'p.valid_to', 'day') }} + 1 as bigint) as campaign_days,
    cast(coalesce(r.redemptions, 0) as bigint) as redemptions,
    cast(coalesce(r.customers, 0) as bigint) as customers,
    cast(coalesce(r.revenue_eur, 0) as decimal(18, 2)) as revenue_eur,
    cast(coalesce(r.discount_eur, 0) as decimal(18, 2)) as discount_eur,
    cast(coalesce(e.eligible_bookings, 0) as bigint) as eligible_bookings,
    cast({{ int_divide('100 * coalesce(r.redemptions, 0)', 'e.eligible_bookings') }} as integer) as uptake_pct,
    cast(round({{ safe_ratio('coalesce(r.redemptions, 0)', 'e.eligible_bookings') }}, 4) as double) as uptake_rate
from promotions as p
left join redeemed as r on r.promotion_id = p.promotion_id
left join eligible as e on e.promotion_id = p.promotion_id
