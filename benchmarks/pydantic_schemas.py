"""Twenty Pydantic models of the kind clients send as ``response_format`` (the openai SDK's
``.parse(response_format=Model)`` sends ``Model.model_json_schema()``), each with the
request that asks for one. Used by structured_finish.py."""
from __future__ import annotations

from datetime import date, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field


class UserProfile(BaseModel):
    username: str
    full_name: str
    age: int
    email: str
    is_active: bool


class LineItem(BaseModel):
    description: str
    quantity: int
    unit_price: float


class Invoice(BaseModel):
    invoice_number: str
    customer: str
    issued: date
    items: list[LineItem]
    total: float


class WeatherReport(BaseModel):
    city: str
    temperature_c: float
    humidity_percent: int
    conditions: Literal["sunny", "cloudy", "rainy", "snowy", "windy"]
    wind_speed_kmh: float


class Product(BaseModel):
    name: str
    sku: str
    price: float = Field(ge=0)
    in_stock: bool
    tags: list[str]


class Event(BaseModel):
    title: str
    starts_at: datetime
    ends_at: datetime
    location: str
    attendees: int


class Ingredient(BaseModel):
    name: str
    amount: float
    unit: str


class Recipe(BaseModel):
    title: str
    servings: int
    prep_minutes: int
    ingredients: list[Ingredient]
    steps: list[str]


class Address(BaseModel):
    street: str
    city: str
    postal_code: str
    country: str


class Company(BaseModel):
    name: str
    founded_year: int
    employees: int
    headquarters: Address
    revenue_musd: float


class Book(BaseModel):
    title: str
    author: str
    year: int
    pages: int
    rating: float = Field(ge=0, le=5)


class Movie(BaseModel):
    title: str
    director: str
    release_year: int
    genres: list[str]
    runtime_minutes: int
    imdb_score: float


class Priority(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Task(BaseModel):
    title: str
    done: bool
    priority: Priority
    estimate_hours: float


class Flight(BaseModel):
    flight_number: str
    origin: str
    destination: str
    departure: datetime
    price_usd: float
    seats_left: int


class Employee(BaseModel):
    name: str
    title: str
    salary: float
    manager: str | None
    start_date: date


class Location(BaseModel):
    name: str
    latitude: float
    longitude: float


class StockQuote(BaseModel):
    symbol: str
    price: float
    change_percent: float
    volume: int


class Review(BaseModel):
    reviewer: str
    stars: int = Field(ge=1, le=5)
    text: str
    helpful_votes: int


class Measurement(BaseModel):
    sensor_id: str
    value: float
    unit: str
    timestamp: datetime


class OrderLine(BaseModel):
    product: str
    quantity: int
    price: float


class Order(BaseModel):
    order_id: str
    customer_email: str
    lines: list[OrderLine]
    shipping_cost: float
    paid: bool


CASES: list[tuple[type[BaseModel], str]] = [
    (UserProfile, "Create a user profile for a software developer named Alice."),
    (Invoice, "Write an invoice for two hours of consulting and one software license."),
    (WeatherReport, "Give today's weather report for Paris."),
    (Product, "Describe a wireless mouse sold in an online shop."),
    (Event, "Describe a one-day tech conference in Berlin next June."),
    (Recipe, "Give a simple pancake recipe."),
    (Company, "Describe a mid-sized coffee roasting company."),
    (Book, "Describe the novel 'Pride and Prejudice'."),
    (Movie, "Describe the movie 'The Matrix'."),
    (Task, "Create a task for fixing a login bug."),
    (Flight, "Describe a flight from London to New York."),
    (Employee, "Describe an employee who works as an accountant."),
    (Location, "Give the location of the Eiffel Tower."),
    (StockQuote, "Give a stock quote for a technology company."),
    (Review, "Write a short review of a pair of running shoes."),
    (Measurement, "Report a temperature sensor reading."),
    (Order, "Write an online order of three books."),
    (Address, "Give the address of a bakery in Rome."),
    (LineItem, "Give one line item: three boxes of paper."),
    (Ingredient, "Give one ingredient of a chocolate cake."),
]


def schemas() -> list[tuple[str, dict[str, Any], str]]:
    """(the model's name, its JSON schema, the request) for each case."""
    return [(model.__name__, model.model_json_schema(), prompt) for model, prompt in CASES]
